"""Open an exported image safely: check what it declares before decoding anything.

:func:`open_image` recognises TIFF / PNG / JPEG / BMP by their magic bytes, parses the
header only, straight from the file (a few kilobytes whatever the file's size), and
refuses before anything is hashed or decoded:

- zero bytes, a directory, a FIFO, socket or device, unknown or truncated headers
                                                        -> UnreadableImageError
- declared width x height above ``max_pixels``          -> ImageTooLargeError
- a dtype other than uint8/uint16/float32, more than ``max_channels`` channels, stacks
  (Z/T > 1)                                             -> UnsupportedImageError

Only then is the file read once, hashed with SHA-256 on the way, and decoded (the
header is parsed again from those bytes, so what was checked is what is decoded).

The returned :class:`ImageSource` yields pixels as ``(H, W, C)`` arrays in the file's
dtype through one narrow hook, ``read_region``. Small images are decoded whole once;
images of at least ``region_read_min_pixels`` are decoded tile by tile (strip by
strip) for each region asked for, never whole.
"""

from __future__ import annotations

import abc
import hashlib
import io
import logging
import os
import stat as stat_module
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ._limits import SUPPORTED_DTYPES
from .errors import UnreadableImageError

__all__ = ["ImageInfo", "ImageSource", "SUPPORTED_DTYPES", "open_image"]

logger = logging.getLogger(__name__)

# Files up to this size are read into memory once (hash and decode see the same bytes).
IN_MEMORY_MAX_BYTES = 512 * 1024 * 1024
_HASH_CHUNK = 8 * 1024 * 1024

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PILLOW_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"BM": "BMP",
}


@dataclass
class ImageInfo:
    """What the header declares; ``shape`` is (H, W, C) of the level that will be read."""

    path: str
    format: str  # "TIFF", "OME-TIFF", "PNG", "JPEG", "BMP"
    shape: tuple[int, int, int]
    dtype: str
    um_per_px: float | None = None  # of the level read; None when the file carries none
    um_per_px_source: str | None = None  # "tiff-resolution" | "ome"
    level: int = 0
    levels: int = 1
    base_shape: tuple[int, int, int] | None = None
    file_size: int = 0
    sha256: str = ""
    region_reads: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def pixels(self) -> int:
        return self.shape[0] * self.shape[1]


class ImageSource(abc.ABC):
    """An opened image. Use as a context manager; ``read_region`` is the one hook."""

    def __init__(self, info: ImageInfo) -> None:
        self.info = info

    @abc.abstractmethod
    def _read_region(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """Pixels of rows ``y0:y1`` and columns ``x0:x1`` as (h, w, C) in the file's dtype."""

    def read_region(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """(h, w, C) pixels of the region, clipped to the image; errors name the file."""
        height, width, _ = self.info.shape
        y0, x0 = max(0, y0), max(0, x0)
        y1, x1 = min(height, y1), min(width, x1)
        if y1 <= y0 or x1 <= x0:
            raise ValueError(f"empty region ({y0}:{y1}, {x0}:{x1}) in {width}x{height} image")
        return self._read_region(y0, x0, y1, x1)

    def read_all(self) -> np.ndarray:
        height, width, _ = self.info.shape
        return self.read_region(0, 0, height, width)

    def overview(self, factor: int) -> np.ndarray:
        """Block-mean reduction by ``factor``: (ceil(H/f), ceil(W/f), C) float32.

        Large images are reduced band by band, so the whole image is never in memory.
        """
        height, width, channels = self.info.shape
        factor = max(1, int(factor))
        out = np.zeros((-(-height // factor), -(-width // factor), channels), np.float32)
        rows = factor * max(1, (8 * 1024 * 1024) // max(1, width * channels * factor))
        for y0 in range(0, height, rows):
            band = self.read_region(y0, 0, min(height, y0 + rows), width).astype(np.float32)
            out[y0 // factor : y0 // factor + -(-band.shape[0] // factor)] = _block_mean(
                band, factor
            )
        return out

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the file."""

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    """(h, w, C) -> (ceil(h/f), ceil(w/f), C) means; edge blocks average what they hold."""
    if factor == 1:
        return array
    h, w, c = array.shape
    ph, pw = -h % factor, -w % factor
    padded = np.pad(array, ((0, ph), (0, pw), (0, 0)), mode="edge")
    return padded.reshape((h + ph) // factor, factor, (w + pw) // factor, factor, c).mean((1, 3))


class ArraySource(ImageSource):
    """An image already decoded into memory as (H, W, C)."""

    def __init__(self, info: ImageInfo, array: np.ndarray) -> None:
        super().__init__(info)
        self._array = array

    def _read_region(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        return self._array[y0:y1, x0:x1]


def _hash_and_open(path: Path, size: int) -> tuple[str, BinaryIO | Path]:
    """SHA-256 of the file and something to decode from (its bytes when small)."""
    digest = hashlib.sha256()
    if size <= IN_MEMORY_MAX_BYTES:
        with path.open("rb") as fh:
            data = fh.read()
        digest.update(data)
        return digest.hexdigest(), io.BytesIO(data)
    with path.open("rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest(), path


def open_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int,
    max_channels: int = 4,
    region_read_min_pixels: int = 4096 * 4096,
    target_um_per_px: float | None = None,
) -> ImageSource:
    """Open ``path``, check its header against the limits, and return an :class:`ImageSource`.

    ``target_um_per_px`` picks the pyramid level closest to (and not coarser than) the
    model's pixel size when the file has several.
    """
    file = Path(path)
    try:
        stat = file.stat()
    except FileNotFoundError as exc:
        raise UnreadableImageError(f"{file}: no such file") from exc
    except OSError as exc:
        raise UnreadableImageError(f"{file}: cannot read: {exc.strerror or exc}") from exc
    if stat_module.S_ISDIR(stat.st_mode):
        raise UnreadableImageError(f"{file}: is a directory; expected an image file")
    if not stat_module.S_ISREG(stat.st_mode):
        raise UnreadableImageError(
            f"{file}: is a {_kind_of(stat.st_mode)}, not a regular file; expected an image file"
        )
    if stat.st_size == 0:
        raise UnreadableImageError(f"{file}: is empty (0 bytes); expected an image file")
    try:
        head = _head(file)
    except OSError as exc:
        raise UnreadableImageError(f"{file}: cannot read: {exc.strerror or exc}") from exc
    limits = dict(
        max_pixels=max_pixels,
        max_channels=max_channels,
        region_read_min_pixels=region_read_min_pixels,
        target_um_per_px=target_um_per_px,
    )
    kind = _format(file, head, stat.st_size)
    # The header's limits first, from the file itself: nothing hashed or decoded yet.
    if kind == "TIFF":
        from ._tiff import check_tiff_header, open_tiff

        check_tiff_header(file, **limits)
    else:
        from ._pillow import check_pillow_header, open_pillow

        check_pillow_header(file, kind, **limits)
    try:
        sha256, handle = _hash_and_open(file, stat.st_size)
    except OSError as exc:
        raise UnreadableImageError(f"{file}: cannot read: {exc.strerror or exc}") from exc
    if kind == "TIFF":
        source = open_tiff(file, handle, **limits)
    else:
        source = open_pillow(file, handle, kind, **limits)
    source.info.file_size = stat.st_size
    source.info.sha256 = sha256
    return source


def _format(file: Path, head: bytes, size: int) -> str:
    """"TIFF" or the Pillow format name the magic bytes announce."""
    if head[:4] in _TIFF_MAGIC:
        return "TIFF"
    kind = next((name for magic, name in _PILLOW_MAGIC.items() if head.startswith(magic)), None)
    if kind is None:
        raise UnreadableImageError(
            f"{file}: not a TIFF, PNG, JPEG or BMP image ({size} bytes starting {head[:8]!r})"
        )
    return kind


def _kind_of(mode: int) -> str:
    if stat_module.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat_module.S_ISSOCK(mode):
        return "socket"
    if stat_module.S_ISCHR(mode) or stat_module.S_ISBLK(mode):
        return "device"
    return "special file"


def _head(file: Path) -> bytes:
    with file.open("rb") as fh:
        return fh.read(16)
