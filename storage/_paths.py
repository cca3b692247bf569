"""File names stored losslessly, whatever bytes the file system holds.

A path is bytes on POSIX; Python gives names that are not UTF-8 as text with lone
surrogates, which neither SQLite's driver nor PostgreSQL accept as text. The stored
form is therefore:

- the name itself when its bytes are valid UTF-8 (every ordinary name: existing rows,
  and raw SQL readers, see what they always saw);
- otherwise ``/`` followed by the bytes percent-encoded (``case1/x%FF.tif`` becomes
  ``/case1/x%FF.tif``). A relative path never starts with ``/``, so the two forms
  cannot be confused, and decoding gives back exactly the bytes that were there.

:class:`FsPath` applies this to a column: Python code sees ``os.fsdecode``-style text
and can open the file with it.
"""

from __future__ import annotations

import hashlib
import os
import urllib.parse

from sqlalchemy import String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

__all__ = ["FsPath", "decode_path", "encode_path", "path_key"]

_MARK = "/"
# Printable ASCII other than "%" stays as it is, so the encoded form is still readable.
_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in "%")


def _raw(path: str) -> bytes:
    try:
        return os.fsencode(path)
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte: keep it distinct
        return path.encode("utf-8", "surrogatepass")


def encode_path(path: str) -> str:
    """The stored text for ``path`` (see the module docstring)."""
    raw = _raw(path)
    if not path.startswith(_MARK):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return _MARK + urllib.parse.quote(raw, safe=_SAFE)


def decode_path(stored: str) -> str:
    """The path (``os.fsdecode`` text) for the stored text."""
    if stored.startswith(_MARK):
        return os.fsdecode(urllib.parse.unquote_to_bytes(stored[len(_MARK):]))
    return stored


def path_key(path: str) -> str:
    """SHA-256 (hex) of the stored text of ``path``: the fixed-size stand-in that unique
    constraints and lookups use, since a path of any length (PATH_MAX is 4096 bytes, three
    times that percent-encoded) does not fit a PostgreSQL B-tree entry (2704 bytes)."""
    return hashlib.sha256(encode_path(path).encode("utf-8")).hexdigest()


class FsPath(TypeDecorator[str]):
    """A file-system path column: stored with :func:`encode_path`, read back exactly."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else encode_path(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else decode_path(value)
