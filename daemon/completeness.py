"""Whether an image file's structure is complete: readiness by format, not by waiting.

After a close-after-write or move-in event, a file is ready as soon as its bytes are
all there, judged by the format (recognised by its first bytes, not by its name):

- TIFF / BigTIFF: the IFD chain parses (tifffile, without a warning about a bad
  offset), there is at least one page, and every strip or tile byte range of every page
  (SubIFD pyramid levels included) lies inside the file;
- PNG: the signature, and the IEND chunk as the last 12 bytes;
- JPEG: SOI at the start and EOI as the last two bytes;
- BMP: the header's file size equals the file's size.

:func:`structure_complete` answers True (complete), False (not yet: truncated, still
being written) or None (a format this module cannot judge; the caller falls back to
stable polls). It opens the file read-only for a moment, reads headers and tag tables
only (never pixel data), and logs nothing (no file names).
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["detect_format", "structure_complete"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def detect_format(head: bytes) -> str | None:
    """"tiff" | "png" | "jpeg" | "bmp" from a file's first bytes; None if none of them."""
    if head[:4] in _TIFF_MAGICS:
        return "tiff"
    if head.startswith(_PNG_SIGNATURE):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"BM") and len(head) >= 6:
        return "bmp"
    return None


def structure_complete(path: str | os.PathLike[str]) -> bool | None:
    """True if complete, False if not (yet), None if the format cannot be judged here.

    A file that cannot be opened or read (gone, no permission) is False: not ready now.
    """
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(16)
            kind = detect_format(head)
            if kind is None:
                return None if size >= 16 else False  # too short to know: not yet
            if kind == "tiff":
                handle.seek(0)  # tifffile takes the current position as the file's start
                return _tiff_complete(handle, size)
            if kind == "bmp":
                declared = struct.unpack("<I", head[2:6])[0]
                return None if declared == 0 else declared == size
            handle.seek(max(0, size - len(_PNG_IEND)))
            tail = handle.read()
    except OSError:
        return False
    if kind == "png":
        return tail.endswith(_PNG_IEND)
    return tail.endswith(b"\xff\xd9")  # JPEG EOI


class _Warnings(logging.Handler):
    """Counts tifffile's warnings raised by this thread (bad IFD offsets are warnings)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.count += 1


@contextmanager
def _tifffile_warnings() -> Iterator[_Warnings]:
    log = logging.getLogger("tifffile")
    handler = _Warnings()
    log.addHandler(handler)
    try:
        yield handler
    finally:
        log.removeHandler(handler)


def _tiff_complete(handle: object, size: int) -> bool:
    import tifffile

    try:
        with _tifffile_warnings() as warnings:
            with tifffile.TiffFile(handle) as tif:  # type: ignore[arg-type]
                pages = list(tif.pages)
                for page in pages:  # grows: SubIFDs (pyramid levels) join the walk
                    if not isinstance(page, tifffile.TiffPage):
                        return False  # a frame that could not be parsed as a page
                    for offset in page.subifds or ():
                        if offset <= 0 or offset >= size:
                            return False
                        tif.filehandle.seek(offset)
                        pages.append(tifffile.TiffPage(tif, index=0))
                if not pages:
                    return False
                for page in pages:
                    for offset, count in zip(page.dataoffsets, page.databytecounts, strict=False):
                        if count and (offset <= 0 or offset + count > size):
                            return False
            return warnings.count == 0
    except (tifffile.TiffFileError, ValueError, IndexError, struct.error, OSError):
        return False
