"""File names for screens: a readable, one-line rendering of any POSIX path.

A path is bytes on POSIX. Python hands names that are not UTF-8 to us as text with
lone surrogates (``os.fsdecode``'s ``surrogateescape``); such text cannot be printed,
and a name may hold newlines or terminal escape sequences. :func:`display_path` turns
any of them into one printable line: undecodable bytes as ``\\xff``, control
characters as ``\\n``, ``\\t``, ``\\x1b``. It is for people only, never for finding the
file again (storage keeps the exact name; see ``marginwatch.storage._paths``).
"""

from __future__ import annotations

import os
import unicodedata

__all__ = ["display_path"]

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def display_path(path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> str:
    """One printable line for ``path`` (lossy: for screens and messages only)."""
    raw = os.fsencode(path) if not isinstance(path, str) else _to_bytes(path)
    text = raw.decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(_visible(ch) for ch in text)


def _to_bytes(text: str) -> bytes:
    try:
        return os.fsencode(text)
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte
        return text.encode("utf-8", "backslashreplace")


def _visible(ch: str) -> str:
    if ch.isprintable() or ch == " ":
        return ch
    if ch in _NAMED:
        return _NAMED[ch]
    if unicodedata.category(ch) in ("Zs",):  # unusual spaces: keep them visible as spaces
        return " "
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
