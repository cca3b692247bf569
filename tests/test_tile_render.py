"""Tile rendering: colouring a grey scan after resampling gives the pixels of colouring first.

engine._tile_reader.render_tile resamples the grey channel and colours it at tile size
(affine colouring commutes with resampling); the reference here colours the whole
region first and resamples the RGB, as it did before.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from marginwatch.engine._tile_reader import render_tile
from marginwatch.engine.card import DeviceProfile
from marginwatch.engine.profiles import background_rgb, to_rgb


def _colour_first(region, profile, high, tile_px, size, fill):  # noqa: ANN001, ANN202
    rgb = torch.from_numpy(to_rgb(region, profile, high=high)).permute(2, 0, 1)
    height, width = region.shape[:2]
    out_h = min(size, max(1, round(height * size / tile_px)))
    out_w = min(size, max(1, round(width * size / tile_px)))
    if (out_h, out_w) != (height, width):
        rgb = F.interpolate(rgb[None], size=(out_h, out_w), mode="bilinear",
                            align_corners=False, antialias=out_h < height)[0]
    canvas = fill[:, None, None].expand(3, size, size).clone()
    canvas[:, :out_h, :out_w] = rgb
    return canvas


@pytest.mark.parametrize(("shape", "tile_px", "size"), [
    ((1024, 1024), 1024, 256),  # the demo: 4 x down, antialiased
    ((700, 1024), 1024, 256),   # a clipped tile: padded at the bottom
    ((256, 256), 256, 256),     # same size
    ((128, 100), 128, 256),     # up
])
@pytest.mark.parametrize("haematoxylin", [(0.30, 0.20, 1.0), (1.4, -0.2, 0.5)])
def test_grey_tiles_match_colouring_first(shape, tile_px, size, haematoxylin) -> None:  # noqa: ANN001
    profile = DeviceProfile(kind="grey", haematoxylin_rgb=haematoxylin)
    rng = np.random.default_rng(sum(shape))
    region = rng.integers(0, 5000, size=(*shape, 1)).astype(np.uint16)
    high = np.array([4000.0], np.float32)  # some pixels above it: scaled values clip at 1
    fill = torch.from_numpy(background_rgb(profile))
    got = render_tile(region, profile, high, tile_px, size, fill)
    expected = _colour_first(region, profile, high, tile_px, size, fill)
    assert got.shape == expected.shape == (3, size, size)
    # affine colours (haematoxylin in [0, 1]) are resampled after; others exactly as before
    tolerance = 2e-6 if all(0 <= c <= 1 for c in haematoxylin) else 0.0
    assert float((got - expected).abs().max()) <= tolerance
