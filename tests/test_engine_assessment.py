"""Tiling, tissue, profiles, aggregation, render and prepare/finish/assess on real TIFFs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import write_fcm_tiff
from marginwatch.engine import assess, finish, load_model, prepare, select_backend
from marginwatch.engine.aggregation import aggregate
from marginwatch.engine.card import DeviceProfile
from marginwatch.engine.config import EngineConfig
from marginwatch.engine.errors import NoTissueError, UnsupportedImageError
from marginwatch.engine.profiles import beer_lambert, gareau_linear, grey_to_rgb, to_rgb
from marginwatch.engine.render import decode_heatmap_png, encode_heatmap_png, heatmap_overlay_png
from marginwatch.engine.tiling import plan_tiles, tile_source_px
from marginwatch.engine.tissue import tissue_mask


def test_tile_plan_boxes_overlap_and_edges():
    plan = plan_tiles(300, 500, 128)
    assert plan.footprints[0] == (0, 0, 128, 128)
    xs = sorted({f[0] for f in plan.footprints})
    ys = sorted({f[1] for f in plan.footprints})
    assert xs == [0, 128, 256, 372] and ys == [0, 128, 172]  # last tile ends at the edge
    assert all(b[2] <= 500 and b[3] <= 300 for b in plan.boxes)
    half = plan_tiles(300, 500, 128, overlap_fraction=0.5)
    assert sorted({f[0] for f in half.footprints}) == [0, 64, 128, 192, 256, 320, 372]
    small = plan_tiles(40, 50, 128)
    assert small.footprints == ((0, 0, 128, 128),) and small.boxes == ((0, 0, 50, 40),)
    assert tile_source_px(896, 1.0, 0.5) == 1792 and tile_source_px(64, 1.0, 2.0) == 32


def test_profiles_formulas():
    f = np.array([[0.0, 1.0]], np.float32)
    r = np.array([[0.0, 0.0]], np.float32)
    np.testing.assert_allclose(gareau_linear(f, r)[0, 1], [0.30, 0.20, 1.0], atol=1e-6)
    np.testing.assert_allclose(
        gareau_linear(r, np.ones_like(r))[0, 0], [1.0, 0.55, 0.88], atol=1e-6
    )
    np.testing.assert_allclose(gareau_linear(f, r)[0, 0], [1, 1, 1])
    np.testing.assert_allclose(grey_to_rgb(f[0])[1], [0.30, 0.20, 1.0], atol=1e-6)
    np.testing.assert_allclose(
        beer_lambert(f, r, strength=1.0)[0, 1], np.exp([-0.7, -0.8, 0.0]), rtol=1e-6
    )
    two = np.stack([np.zeros((4, 4)), np.full((4, 4), 65535)], -1).astype(np.uint16)
    rgb = to_rgb(
        two, DeviceProfile(kind="reflectance+fluorescence", intensity_scaling="dtype-range")
    )
    np.testing.assert_allclose(rgb[0, 0], [0.30, 0.20, 1.0], atol=1e-5)
    with pytest.raises(UnsupportedImageError, match="expects 1"):
        to_rgb(two, DeviceProfile(kind="grey"))


def test_tissue_mask_and_empty_slide():
    signal = np.zeros((50, 50), np.float32)
    signal[10:40, 10:40] = 0.6
    mask = tissue_mask(signal + np.random.default_rng(0).normal(0, 0.01, signal.shape))
    # smoothing widens the edge by a pixel or two: doubt falls on the side of tissue
    assert mask[20, 20] and not mask[2, 2] and 0.36 <= mask.mean() < 0.5
    assert not tissue_mask(np.full((20, 20), 0.01, np.float32)).any()
    assert tissue_mask(np.full((20, 20), 0.9, np.float32), flat_is_tissue=True).all()
    noise = np.random.default_rng(1).normal(0.5, 0.15, (64, 64)).clip(0, 1)
    assert not tissue_mask(noise).any()  # one noisy mode (stretched glass) is not tissue


def test_tissue_mask_counts_stroma_and_lumens_not_just_nuclei():
    # dim stroma with sparse bright nuclei and a dark gland lumen, glass on the right:
    # the specimen is tissue even where no nucleus is, or a tile of stroma with a few
    # tumour glands would be skipped as background
    rng = np.random.default_rng(3)
    signal = rng.normal(0.02, 0.005, (120, 160)).astype(np.float32)
    signal[:, :100] = rng.normal(0.15, 0.03, (120, 100))
    signal[40:70, 30:60] = 0.04  # lumen inside the tissue
    spots = rng.integers(0, 100, (120, 2))
    signal[spots[:, 0] % 120, spots[:, 1]] = 1.0
    mask = tissue_mask(np.clip(signal, 0, 1))
    assert mask[:, 5:95].mean() > 0.97  # stroma and the enclosed lumen
    assert not mask[:, 110:].any()  # glass


@pytest.mark.parametrize(
    "method,value",
    [
        ("max", 0.9),
        ("mean", 0.375),
        ("top3-mean", 1.4 / 3),
        ("noisy-or", 1 - 0.9 * 0.7 * 0.8 * 0.1),
    ],
)
def test_aggregation(method, value):
    probability, driving = aggregate(np.array([0.1, 0.3, 0.2, 0.9]), method)
    assert probability == pytest.approx(value) and driving == 3


def test_render_round_trip_and_overlay():
    heat = np.random.default_rng(0).random((30, 40)).astype(np.float32)
    back = decode_heatmap_png(encode_heatmap_png(heat))
    assert back.shape == (30, 40) and np.abs(back - heat).max() <= 1 / 65535
    import io

    from PIL import Image

    png = heatmap_overlay_png(heat, np.zeros((60, 80, 3), np.uint8))
    assert Image.open(io.BytesIO(png)).size == (40, 30)
    assert Image.open(io.BytesIO(heatmap_overlay_png(heat))).mode == "RGB"


def test_prepare_finish_assess(tmp_path, tiny_model_dir):
    model = load_model(tiny_model_dir)
    path = write_fcm_tiff(
        tmp_path / "a.tif", shape=(200, 260), um_per_px=0.5, tile=(64, 64), compression="zlib"
    )
    config = EngineConfig(heatmap_max_side_px=64)
    prepared = prepare(path, model, config)
    assert prepared.um_per_px_source == "tiff-resolution" and prepared.tile_px == 128
    assert prepared.tiles.shape[1:] == (3, 64, 64) and prepared.tiles.dtype == torch.float32
    assert len(prepared.boxes) == prepared.tiles.shape[0] == len(prepared.tissue_fractions)
    assert all(0 <= x0 < x1 <= 260 and 0 <= y0 < y1 <= 200 for x0, y0, x1, y1 in prepared.boxes)
    assert prepared.heatmap_scale == 5 and prepared.preview_rgb.shape == (40, 52, 3)
    # region-by-region reading gives the same tiles
    region = prepare(
        path,
        model,
        EngineConfig(heatmap_max_side_px=64, region_read_min_pixels=1000, max_pixels=10**6),
    )
    torch.testing.assert_close(region.tiles, prepared.tiles)
    backend = select_backend(model, config)
    inference = backend.infer(prepared.tiles)
    result = finish(prepared, inference, model, config, backend=backend)
    assert 0 <= result.probability <= 1 and result.decision == (result.probability >= 0.5)
    assert result.probability == pytest.approx(max(t.probability for t in result.tiles))
    assert result.tiles[result.driving_tile].probability == pytest.approx(result.probability)
    assert result.heatmap.shape == (40, 52) and result.heatmap.dtype == np.float32
    assert 0 <= result.heatmap.min() and result.heatmap.max() <= 1
    assert set(result.timings) == {"read", "preprocess", "quality", "infer", "cam", "aggregate"}
    assert (result.backend, result.sha256, result.model_digest) == (
        "torch-cpu",
        prepared.sha256,
        model.digest,
    )
    again = assess(path, model, config)
    assert again.probability == pytest.approx(result.probability, abs=1e-6)


def test_background_skipped_small_image_padded_and_pixel_size_sources(tmp_path, tiny_model_dir):
    model = load_model(tiny_model_dir)
    small = write_fcm_tiff(tmp_path / "small.tif", shape=(40, 30), um_per_px=None)
    prepared = prepare(small, model, EngineConfig(min_tissue_fraction=0.0))
    assert prepared.um_per_px_source == "profile-default" and prepared.um_per_px == 1.0
    assert prepared.boxes == [(0, 0, 30, 40)] and prepared.tiles.shape[0] == 1
    from_config = prepare(small, model, EngineConfig(default_um_per_px=0.5, min_tissue_fraction=0))
    assert (from_config.um_per_px, from_config.um_per_px_source) == (0.5, "config")
    # a tissue island in the corner: far tiles are background and skipped
    data = np.zeros((256, 256), np.uint16)
    data[:60, :60] = 30000
    import tifffile

    tifffile.imwrite(tmp_path / "corner.tif", data)
    corner = prepare(tmp_path / "corner.tif", model, EngineConfig())
    assert corner.boxes == [(0, 0, 64, 64)]
    with pytest.raises(NoTissueError, match="not assessed"):
        prepare(write_fcm_tiff(tmp_path / "glass.tif", tissue=False), model, EngineConfig())


def test_wrong_channel_count_for_the_model(tmp_path, tiny_model_dir):
    model = load_model(tiny_model_dir)
    path = write_fcm_tiff(tmp_path / "rgb.tif", channels=3, dtype="uint8")
    with pytest.raises(UnsupportedImageError, match="rgb.tif: 3 channel"):
        prepare(path, model, EngineConfig())
