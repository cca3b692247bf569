"""Writing synthetic scans as TIFF: plain strips, or tiled pyramids (``--mosaic``).

Pixel size goes in the baseline resolution tags (XResolution/YResolution in pixels
per centimetre, ResolutionUnit CENTIMETER), which every TIFF reader understands.
Nothing time-dependent is written (no DateTime tag), so the same pixels always give
the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tifffile

__all__ = ["write_tiff"]

TILE = (512, 512)


def _downsample(data: np.ndarray) -> np.ndarray:
    """2 x 2 mean, (H, W[, C]) -> (H // 2, W // 2[, C]), same dtype."""
    h, w = data.shape[0] // 2 * 2, data.shape[1] // 2 * 2
    d = data[:h, :w].astype(np.float32)
    m = (d[0::2, 0::2] + d[1::2, 0::2] + d[0::2, 1::2] + d[1::2, 1::2]) / 4
    return np.rint(m).astype(data.dtype)


def write_tiff(
    path: Path,
    pixels: np.ndarray,
    *,
    um_per_px: float,
    profile: str,
    channels: list[str],
    mosaic: bool = False,
) -> None:
    """Write pixels (H, W) or (H, W, C) with the pixel size in the resolution tags.

    ``mosaic``: tiled (512 x 512), zlib, with 2x-downsampled levels as SubIFDs of the
    first page until the smaller side is at most 512 px (the layout of OME/QPTIFF
    pyramids that tifffile, QuPath and OpenSlide-like readers open).
    """
    ppcm = 1e4 / um_per_px
    rgb = pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.dtype == np.uint8
    options = dict(
        photometric="rgb" if rgb else "minisblack",
        planarconfig="contig" if pixels.ndim == 3 else None,
        resolution=(ppcm, ppcm),
        resolutionunit="CENTIMETER",
        compression="zlib",
        software="marginwatch synth",
    )
    metadata = {
        "axes": "YXS" if pixels.ndim == 3 else "YX",
        "um_per_px": um_per_px,
        "profile": profile,
        "channels": channels,
        "synthetic": True,
    }
    levels = []
    if mosaic:
        level = pixels
        while min(level.shape[:2]) > 512:
            level = _downsample(level)
            levels.append(level)
    with tifffile.TiffWriter(path, bigtiff=mosaic and pixels.nbytes > 2**31) as tif:
        if mosaic:
            # a plain JSON description, not tifffile's "shaped" one: shaped series
            # metadata does not describe SubIFD pyramids and tifffile then logs an error
            tif.write(
                pixels,
                tile=TILE,
                subifds=len(levels),
                metadata=None,
                description=json.dumps(metadata),
                **options,
            )
            for i, level in enumerate(levels, start=1):
                scale = 2**i
                tif.write(
                    level,
                    tile=TILE,
                    subfiletype=1,
                    metadata=None,
                    **{**options, "resolution": (ppcm / scale, ppcm / scale), "software": None},
                )
        else:
            tif.write(pixels, metadata=metadata, rowsperstrip=64, **options)
