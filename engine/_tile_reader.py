"""Reading an image's planned tiles on demand, a bounded chunk at a time.

:class:`TileReader` holds the open :class:`~marginwatch.engine.reader.ImageSource` and
what ``prepare`` decided (boxes, device profile, intensity scale, tile size) and turns
rows ``start:stop`` of the plan into ``(n, 3, S, S)`` uint8 RGB tiles. It owns the
source: :meth:`TileReader.close` releases it (idempotent; a finaliser closes it too if
a caller forgets, so an abandoned image never keeps its file open past collection).
"""

from __future__ import annotations

import time
import weakref

import numpy as np
import torch
import torch.nn.functional as F

from .card import DeviceProfile
from .normalisation import tiles_to_uint8
from .profiles import background_rgb, grey_to_rgb, scale_intensities, to_rgb
from .reader import ImageSource
from .tiling import Box

__all__ = ["TileReader", "render_tile"]


class TileReader:
    """Planned tiles of one open image (see the module docstring)."""

    def __init__(
        self,
        source: ImageSource,
        boxes: list[Box],
        profile: DeviceProfile,
        high: np.ndarray,
        tile_px: int,
        size: int,
    ) -> None:
        self._source: ImageSource | None = source
        self._boxes = boxes
        self._profile = profile
        self._high = high
        self._tile_px = tile_px
        self._size = size
        self._fill = torch.from_numpy(background_rgb(profile))
        self._finalizer = weakref.finalize(self, source.close)

    @property
    def closed(self) -> bool:
        return self._source is None

    def read(self, start: int, stop: int, timings: dict[str, float]) -> torch.Tensor:
        """Tiles ``start:stop`` of the plan: (n, 3, S, S) uint8 RGB.

        Adds the region reads to ``timings["read"]`` and the colour mapping,
        resampling and padding to ``timings["preprocess"]``.
        """
        if self._source is None:
            raise ValueError("the image's tiles were already read (its file is closed)")
        out = torch.empty((stop - start, 3, self._size, self._size), dtype=torch.uint8)
        read_s = convert_s = 0.0
        for index in range(start, stop):
            x0, y0, x1, y1 = self._boxes[index]
            started = time.perf_counter()
            region = self._source.read_region(y0, x0, y1, x1)
            read_s += time.perf_counter() - started
            started = time.perf_counter()
            rgb = render_tile(region, self._profile, self._high, self._tile_px, self._size,
                              self._fill)
            out[index - start] = tiles_to_uint8(rgb)
            convert_s += time.perf_counter() - started
        timings["read"] = timings.get("read", 0.0) + read_s
        timings["preprocess"] = timings.get("preprocess", 0.0) + convert_s
        return out

    def close(self) -> None:
        """Release the image file (idempotent)."""
        if self._source is not None:
            self._source = None
            self._finalizer()


def render_tile(
    region: np.ndarray,
    profile: DeviceProfile,
    high: np.ndarray,
    tile_px: int,
    size: int,
    fill: torch.Tensor,
) -> torch.Tensor:
    """(h, w, C) raw region -> (3, size, size) RGB float in [0, 1], resampled and padded."""
    height, width = region.shape[:2]
    out_h = min(size, max(1, round(height * size / tile_px)))
    out_w = min(size, max(1, round(width * size / tile_px)))
    if _colours_after_resampling(profile):
        # grey's colouring is affine, 1 - f (1 - h), and never clipped for f and h in
        # [0, 1]; resampling is a weighted mean with weights summing to 1, so the two
        # commute: resample the one scaled channel, then colour it at tile size (the same
        # pixels to float rounding, a third of the resampling and 1/16 of the colouring
        # for a 1024 px region on a 256 px tile)
        grey = torch.from_numpy(scale_intensities(region, high)).permute(2, 0, 1)
        grey = _resample(grey, height, width, out_h, out_w)
        rgb = torch.from_numpy(grey_to_rgb(grey[0].numpy(), profile.haematoxylin_rgb))
        rgb = rgb.permute(2, 0, 1)
    else:
        rgb = torch.from_numpy(to_rgb(region, profile, high=high)).permute(2, 0, 1)  # HWC -> CHW
        rgb = _resample(rgb, height, width, out_h, out_w)
    if (out_h, out_w) == (size, size):
        return rgb
    canvas = fill[:, None, None].expand(3, size, size).clone()  # pad bottom/right
    canvas[:, :out_h, :out_w] = rgb
    return canvas


def _colours_after_resampling(profile: DeviceProfile) -> bool:
    """Whether the profile's colour map commutes with resampling (affine, never clipped)."""
    return profile.kind == "grey" and all(0.0 <= c <= 1.0 for c in profile.haematoxylin_rgb)


def _resample(chw: torch.Tensor, height: int, width: int, out_h: int, out_w: int) -> torch.Tensor:
    if (out_h, out_w) == (height, width):
        return chw
    return F.interpolate(
        chw[None],
        size=(out_h, out_w),
        mode="bilinear",
        align_corners=False,
        antialias=out_h < height,
    )[0]
