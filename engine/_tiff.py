"""TIFF through tifffile: layout, pixel size, pyramid level, region-by-region decoding.

Handles uint8/uint16/float32, 1-4 channels interleaved (``YXS``) or planar (``SYX``,
or one page per channel ``CYX``/``QYX``), strips or tiles, classic or BigTIFF, every
compression imagecodecs decodes (deflate, LZW, JPEG, zstd, ...), pyramids (SubIFDs or
reduced pages) and OME-TIFF. Region reads decode only the strips/tiles they touch
through tifffile's own per-segment decoder.
"""

from __future__ import annotations

import logging
import math
import re
import struct
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import tifffile

from ._limits import check_declared
from .errors import ImageTooLargeError, UnreadableImageError, UnsupportedImageError
from .reader import ArraySource, ImageInfo, ImageSource

__all__ = ["check_tiff_header", "open_tiff"]

logger = logging.getLogger(__name__)
# tifffile logs every malformed tag it meets: a 639-byte hostile file (tests/data/fuzz/)
# made it write 224 MB of log lines, for minutes, into the daemon's journal. What
# matters reaches the caller as an UnreadableImageError; the rest is not logged.
logging.getLogger("tifffile").setLevel(logging.CRITICAL)

# A pixel size outside this range is not a microscope's (e.g. a 72 dpi default): ignored.
PLAUSIBLE_UM_PER_PX = (0.01, 100.0)
_CHANNEL_AXES = "CSIQ"
MAX_PAGES = 4096  # channels and pyramid levels; a stack this deep is not an FCM export
_UM_PER_UNIT = {2: 25_400.0, 3: 10_000.0}  # ResolutionUnit INCH, CENTIMETER
_OME_UNITS = {
    "µm": 1.0,
    "um": 1.0,
    "micron": 1.0,
    "nm": 1e-3,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
    "Å": 1e-4,
    "pm": 1e-6,
}
_IMAGEJ_UNITS = {
    "micron": 1.0,
    "um": 1.0,
    "µm": 1.0,
    "\\u00B5m": 1.0,
    "microns": 1.0,
    "nm": 1e-3,
    "mm": 1e3,
}

DECODE_ERRORS = (
    tifffile.TiffFileError,
    ValueError,
    IndexError,
    KeyError,
    TypeError,
    struct.error,
    OSError,
    EOFError,
    RuntimeError,
    NotImplementedError,
    ZeroDivisionError,
    OverflowError,  # an offset past what a seek can take (fuzz finding)
    AssertionError,  # tifffile asserts its own invariants on a corrupt page (fuzz finding)
)


def check_tiff_header(
    file: Path,
    *,
    max_pixels: int,
    max_channels: int,
    region_read_min_pixels: int,
    target_um_per_px: float | None,
) -> None:
    """Parse only the TIFF's header and IFDs from the file and check the declared level.

    Reads a few kilobytes whatever the file's size, so that a hostile file declaring
    100000 x 100000 pixels is refused before anything hashes or decodes it.
    """
    del region_read_min_pixels
    try:
        tif = tifffile.TiffFile(file)
    except DECODE_ERRORS as exc:
        raise UnreadableImageError(
            f"{file}: TIFF header is corrupt or truncated ({type(exc).__name__}: {exc})"
        ) from exc
    with tif:
        _inspect(file, tif, max_pixels=max_pixels, max_channels=max_channels,
                 target_um_per_px=target_um_per_px)


def _inspect(
    file: Path,
    tif: tifffile.TiffFile,
    *,
    max_pixels: int,
    max_channels: int,
    target_um_per_px: float | None,
) -> tuple[ImageInfo, Any, str]:
    """The level to read, checked against the limits: (info, series level, axes).

    tifffile parses tags lazily, so a malformed one can raise from any attribute: such
    errors are UnreadableImageError here, never an exception the caller does not expect.
    """
    try:
        return _inspect_levels(file, tif, max_pixels=max_pixels, max_channels=max_channels,
                               target_um_per_px=target_um_per_px)
    except DECODE_ERRORS as exc:
        raise UnreadableImageError(
            f"{file}: TIFF structure is corrupt ({type(exc).__name__}: {exc})"
        ) from exc


def open_tiff(
    file: Path,
    handle: BinaryIO | Path,
    *,
    max_pixels: int,
    max_channels: int,
    region_read_min_pixels: int,
    target_um_per_px: float | None,
) -> ImageSource:
    try:
        tif = tifffile.TiffFile(handle)
    except DECODE_ERRORS as exc:
        raise UnreadableImageError(
            f"{file}: TIFF header is corrupt or truncated ({type(exc).__name__}: {exc})"
        ) from exc
    try:
        return _open(
            file,
            tif,
            max_pixels=max_pixels,
            max_channels=max_channels,
            region_read_min_pixels=region_read_min_pixels,
            target_um_per_px=target_um_per_px,
        )
    except BaseException:
        tif.close()
        raise


def _open(
    file: Path,
    tif: tifffile.TiffFile,
    *,
    max_pixels: int,
    max_channels: int,
    region_read_min_pixels: int,
    target_um_per_px: float | None,
) -> ImageSource:
    info, level, layout = _inspect(file, tif, max_pixels=max_pixels, max_channels=max_channels,
                                   target_um_per_px=target_um_per_px)
    shape = info.shape
    if shape[0] * shape[1] >= region_read_min_pixels:
        info.region_reads = True
        return TiffRegionSource(info, tif, level, layout)
    try:
        array = level.asarray()
    except DECODE_ERRORS as exc:
        raise UnreadableImageError(
            f"{file}: TIFF pixel data is corrupt or truncated ({type(exc).__name__}: {exc})"
        ) from exc
    finally:
        tif.close()
    return ArraySource(info, _to_hwc(array, layout))


def _inspect_levels(
    file: Path,
    tif: tifffile.TiffFile,
    *,
    max_pixels: int,
    max_channels: int,
    target_um_per_px: float | None,
) -> tuple[ImageInfo, Any, str]:
    try:
        # Index the pages first: on a hostile 639-byte file (tests/data/fuzz/log-flood.tif)
        # tifffile's series detection went on for minutes when it met them lazily.
        if len(tif.pages) > MAX_PAGES:
            raise UnsupportedImageError(
                f"{file}: {len(tif.pages)} TIFF pages; expected at most {MAX_PAGES}"
            )
        list(tif.pages)  # parse every page now (bounded by MAX_PAGES)
        series = tif.series[0] if tif.series else None
    except DECODE_ERRORS as exc:
        raise UnreadableImageError(f"{file}: TIFF structure is corrupt ({exc})") from exc
    if series is None or not series.pages:
        raise UnreadableImageError(f"{file}: TIFF holds no image")
    levels = list(series.levels) or [series]
    base_shape = _layout(file, levels[0])[0]
    um, source, notes = _pixel_size(tif, levels[0])
    chosen = 0
    if um is not None and target_um_per_px is not None and len(levels) > 1:
        chosen = _choose_level(levels, base_shape[1], um, target_um_per_px)
    level = levels[chosen]
    shape, layout = _layout(file, level)
    level_um = None if um is None else um * base_shape[1] / shape[1]
    dtype = str(np.dtype(level.dtype))
    what = f" (pyramid level {chosen} of {len(levels)})" if len(levels) > 1 else ""
    check_declared(file, shape, dtype, max_pixels=max_pixels, max_channels=max_channels, what=what)
    _check_segments(file, level, shape, max_pixels)
    info = ImageInfo(
        path=str(file),
        format="OME-TIFF" if tif.is_ome else "TIFF",
        shape=shape,
        dtype=dtype,
        um_per_px=level_um,
        um_per_px_source=source if um is not None else None,
        level=chosen,
        levels=len(levels),
        base_shape=base_shape,
        notes=notes,
    )
    return info, level, layout


def _check_segments(file: Path, level: Any, shape: tuple[int, int, int], max_pixels: int) -> None:
    """Refuse tiles or strips larger than the limits allow: decoding one allocates it whole
    (a small image declaring a 973087504-pixel-wide tile made imagecodecs run out of
    memory), whatever the image's own size."""
    keyframe = level.pages[0].keyframe if level.pages else None
    if keyframe is None:
        return
    height, width, _ = shape
    if keyframe.is_tiled:
        seg_h, seg_w = int(keyframe.tilelength), int(keyframe.tilewidth)
        seg_h *= max(1, int(getattr(keyframe, "tiledepth", 1) or 1))
    else:
        seg_h, seg_w = min(int(keyframe.rowsperstrip or height), height), width
    if seg_h * seg_w > max(max_pixels, height * width):
        raise ImageTooLargeError(
            f"{file}: declares {'tiles' if keyframe.is_tiled else 'strips'} of "
            f"{seg_w}x{seg_h} pixels, larger than the image allows "
            f"(engine.max_pixels={max_pixels:,}); nothing was decoded"
        )


def _layout(file: Path, level: Any) -> tuple[tuple[int, int, int], str]:
    """(H, W, C) of a series level and its axes with singleton non-image axes removed."""
    axes = level.axes
    kept = "".join(a for a, n in zip(axes, level.shape, strict=True) if a in "YX" or n > 1)
    sizes = dict(zip(axes, level.shape, strict=True))
    channel_axes = [a for a in kept if a not in "YX"]
    if (
        "Y" not in kept
        or "X" not in kept
        or len(channel_axes) > 1
        or (channel_axes and channel_axes[0] not in _CHANNEL_AXES)
    ):
        raise UnsupportedImageError(
            f"{file}: TIFF layout {axes} {tuple(level.shape)}; expected a single 2-D image "
            "with 1-4 channels (no Z-stacks, time series or extra dimensions)"
        )
    channels = sizes[channel_axes[0]] if channel_axes else 1
    return (sizes["Y"], sizes["X"], channels), axes


def _to_hwc(array: np.ndarray, axes: str) -> np.ndarray:
    """Array in the series' ``axes`` order -> (H, W, C)."""
    drop = tuple(
        i
        for i, (a, n) in enumerate(zip(axes, array.shape, strict=True))
        if a not in "YX" and n == 1
    )
    kept = "".join(a for i, a in enumerate(axes) if i not in drop)
    array = array.squeeze(axis=drop)
    if len(kept) == 2:
        return array[..., None]
    channel = next(a for a in kept if a not in "YX")
    # e.g. SYX (planar) or CYX (page per channel) -> YXC: channels last
    return np.transpose(array, (kept.index("Y"), kept.index("X"), kept.index(channel)))


def _choose_level(levels: list[Any], base_width: int, base_um: float, target_um: float) -> int:
    """The coarsest level whose pixel size is not coarser than the target (+5 %).

    Like OpenSlide's best level for a downsample: going coarser than the model's pixel
    size would need upsampling, which invents no detail but costs it.
    """
    best = 0
    for index, level in enumerate(levels):
        width = dict(zip(level.axes, level.shape, strict=True))["X"]
        if base_um * base_width / width <= target_um * 1.05:
            best = index
    return best


def _pixel_size(tif: tifffile.TiffFile, level: Any) -> tuple[float | None, str, list[str]]:
    """Micrometres per pixel of the base level, its source, and notes on what was ignored."""
    notes: list[str] = []
    candidates: list[tuple[float, str]] = []
    if tif.is_ome and tif.ome_metadata:
        value = _ome_um_per_px(tif.ome_metadata)
        if value is not None:
            candidates.append((value, "ome"))
    page = level.pages[0] if level.pages else tif.pages[0]
    try:
        value = _resolution_um_per_px(tif, page)
    except (TypeError, ValueError, ZeroDivisionError, KeyError, IndexError):
        value = None  # e.g. a ResolutionUnit with several values: no trusted pixel size
        notes.append("ignored malformed resolution tags")
    if value is not None:
        candidates.append((value, "tiff-resolution"))
    low, high = PLAUSIBLE_UM_PER_PX
    for value, source in candidates:
        if low <= value <= high:
            return value, source, notes
        notes.append(f"ignored {source} pixel size {value:.4g} um (outside {low}-{high} um)")
    return None, "", notes


def _resolution_um_per_px(tif: tifffile.TiffFile, page: Any) -> float | None:
    tags = page.tags
    if "XResolution" not in tags:
        return None
    numerator, denominator = tags["XResolution"].value
    if not numerator or not denominator:
        return None
    pixels_per_unit = numerator / denominator
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2
    if unit in _UM_PER_UNIT:
        return _UM_PER_UNIT[unit] / pixels_per_unit
    imagej = tif.imagej_metadata or {}
    scale = _IMAGEJ_UNITS.get(str(imagej.get("unit", "")).strip())
    if unit == 1 and scale is not None:  # ImageJ: unit NONE, pixels per ``unit`` in metadata
        return scale / pixels_per_unit
    return None


def _ome_um_per_px(xml: str) -> float | None:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for element in root.iter():
        if re.sub(r"^\{.*\}", "", element.tag) == "Pixels" and "PhysicalSizeX" in element.attrib:
            try:
                value = float(element.attrib["PhysicalSizeX"])
            except ValueError:
                return None
            unit = element.attrib.get("PhysicalSizeXUnit", "µm")
            return value * _OME_UNITS[unit] if unit in _OME_UNITS else None
    return None


class TiffRegionSource(ImageSource):
    """Decodes only the strips/tiles a region touches (tifffile's per-segment decoder)."""

    def __init__(self, info: ImageInfo, tif: tifffile.TiffFile, level: Any, layout: str) -> None:
        super().__init__(info)
        self._tif = tif
        self._pages = list(level.pages)
        self._lock = threading.RLock()
        if len(self._pages) > 1 and any(p.keyframe.samplesperpixel > 1 for p in self._pages):
            raise UnsupportedImageError(
                f"{info.path}: several pages with several samples each; expected one page "
                "per channel or one page with all channels"
            )

    def close(self) -> None:
        self._tif.close()

    def _read_region(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        try:
            with self._lock:
                planes = [_page_region(page, y0, x0, y1, x1) for page in self._pages]
        except DECODE_ERRORS as exc:
            raise UnreadableImageError(
                f"{self.info.path}: TIFF pixel data is corrupt or truncated "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        if len(planes) == 1:
            return planes[0]
        return np.concatenate(planes, axis=2)  # one page per channel -> (h, w, C)


def _page_region(page: Any, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    """Rows y0:y1, columns x0:x1 of one page as (h, w, samples)."""
    keyframe = page.keyframe
    separate, depth, height, width, contig = keyframe.shaped
    if depth != 1:
        raise UnsupportedImageError(f"volumetric TIFF page (depth {depth}); expected 2-D")
    if keyframe.is_tiled:
        seg_h, seg_w = keyframe.tilelength, keyframe.tilewidth
    else:
        seg_h, seg_w = min(keyframe.rowsperstrip or height, height), width
    rows, cols = math.ceil(height / seg_h), math.ceil(width / seg_w)
    if rows * cols * separate != len(page.dataoffsets):
        raise tifffile.TiffFileError(
            f"{len(page.dataoffsets)} segments; expected {rows * cols * separate}"
        )
    wanted = [
        (s * rows + ty) * cols + tx
        for s in range(separate)
        for ty in range(y0 // seg_h, (y1 - 1) // seg_h + 1)
        for tx in range(x0 // seg_w, (x1 - 1) // seg_w + 1)
    ]
    out = np.zeros((separate, y1 - y0, x1 - x0, contig), dtype=keyframe.dtype)
    decode = keyframe.decode
    extra: dict[str, Any] = {}
    if keyframe.compression in {6, 7, 34892, 33007}:  # JPEG variants need their tables
        extra = {"jpegtables": keyframe.jpegtables, "jpegheader": keyframe.jpegheader}
    fh = page.parent.filehandle
    offsets = [page.dataoffsets[i] for i in wanted]
    counts = [page.databytecounts[i] for i in wanted]
    for data, index in fh.read_segments(offsets, counts, indices=wanted, sort=True, flat=True):
        segment, (s, _d, sy, sx, _c), _shape = decode(data, index, **extra)
        if segment is None:
            continue  # an empty segment is "no data": zeros
        segment = segment[0]  # (h, w, contig) of this strip/tile
        ys, xs = max(y0, sy), max(x0, sx)
        ye, xe = min(y1, sy + segment.shape[0]), min(x1, sx + segment.shape[1])
        if ye > ys and xe > xs:
            out[s, ys - y0 : ye - y0, xs - x0 : xe - x0] = segment[
                ys - sy : ye - sy, xs - sx : xe - sx
            ]
    if separate > 1:
        return np.transpose(out[..., 0], (1, 2, 0))  # (S, h, w) planar -> (h, w, S)
    return out[0]
