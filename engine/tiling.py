"""Tile geometry at the model's pixel size, in source pixels.

A tile is ``input_size_px`` model pixels wide, i.e. ``input_size_px * model_um /
source_um`` source pixels. Positions step by ``tile * (1 - overlap)``; the last tile
of a row/column is pushed back to end at the image edge, so tiles never overhang
unless the image is smaller than one tile, in which case it is one tile padded at
the bottom/right. Boxes are ``(x0, y0, x1, y1)`` in source pixels, clipped to the image;
footprints are the same boxes before clipping (what the padded tile covers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Box", "TilePlan", "overview_window", "plan_tiles", "tile_source_px"]

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1), source pixels, end exclusive


def overview_window(box: Box, factor: int) -> tuple[slice, slice]:
    """(rows, cols) of an overview reduced by ``factor`` that cover a source-pixel box.

    Every overview pixel the box touches, and at least one.
    """
    x0, y0, x1, y1 = box
    return (
        slice(y0 // factor, max(y0 // factor + 1, -(-y1 // factor))),
        slice(x0 // factor, max(x0 // factor + 1, -(-x1 // factor))),
    )


def tile_source_px(input_size_px: int, model_um_per_px: float, source_um_per_px: float) -> int:
    """Side of one tile in source pixels."""
    return max(1, round(input_size_px * model_um_per_px / source_um_per_px))


def _positions(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    count = math.ceil((length - tile) / stride) + 1
    return sorted({min(i * stride, length - tile) for i in range(count)})


@dataclass(frozen=True)
class TilePlan:
    """Every candidate tile of an image (before the background test)."""

    height: int
    width: int
    tile_px: int  # side in source pixels
    stride_px: int
    footprints: tuple[Box, ...]

    @property
    def boxes(self) -> tuple[Box, ...]:
        return tuple(self.clip(f) for f in self.footprints)

    def clip(self, footprint: Box) -> Box:
        x0, y0, x1, y1 = footprint
        return (x0, y0, min(x1, self.width), min(y1, self.height))


def plan_tiles(height: int, width: int, tile_px: int, overlap_fraction: float = 0.0) -> TilePlan:
    """Row-major tiles covering an (H, W) image; see the module docstring."""
    if not 0.0 <= overlap_fraction < 1.0:
        raise ValueError(f"overlap_fraction must be in [0, 1); got {overlap_fraction}")
    stride = max(1, round(tile_px * (1.0 - overlap_fraction)))
    footprints = tuple(
        (x, y, x + tile_px, y + tile_px)
        for y in _positions(height, tile_px, stride)
        for x in _positions(width, tile_px, stride)
    )
    return TilePlan(height, width, tile_px, stride, footprints)
