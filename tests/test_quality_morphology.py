"""The quality gate's fast morphology gives scipy's answers (scipy is the oracle).

engine.quality erodes by slicing, box-filters only the kept grid points and closes and
opens by FFT disc convolutions, to keep the gate under a tenth of ``assess``. Each is
checked here against the scipy.ndimage call it replaces, and the void fraction as a
whole against the distance-transform version it replaced.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from marginwatch.engine import _morphology, quality
from marginwatch.engine.quality import MIN_MEASURE_PX, SATURATED_LEVEL, tile_saturation
from scipy import ndimage

SHAPES = [(1, 1), (1, 9), (9, 1), (2, 2), (5, 7), (40, 33), (128, 96)]


def _blobs(rng: np.random.Generator, shape: tuple[int, int], level: float) -> np.ndarray:
    return ndimage.uniform_filter(rng.random(shape), 5, mode="nearest") > level


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("iterations", [1, 3])
def test_cross_erosion_equals_binary_erosion(shape, iterations) -> None:  # noqa: ANN001
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    for level in (0.2, 0.5, -1.0):  # -1: all True, where the border alone erodes
        mask = _blobs(rng, shape, level)
        expected = ndimage.binary_erosion(mask, iterations=iterations)
        assert np.array_equal(_morphology.erode_cross(mask, iterations), expected)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("step", [1, 2, 3, 4, 6])
def test_strided_box_mean_equals_uniform_filter(shape, step) -> None:  # noqa: ANN001
    values = np.random.default_rng(step).random(shape).astype(np.float32)
    expected = ndimage.uniform_filter(values, size=step + 2, mode="nearest")[::step, ::step]
    got = _morphology.box_mean_strided(values, step + 2, step)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("radius", [1.0, 2.5, 4.17, 8.33])
def test_disc_dilation_equals_the_distance_transform(radius: float) -> None:
    rng = np.random.default_rng(int(radius * 100))
    for shape in [(3, 3), (31, 47), (191, 191)]:
        for level in (0.45, 0.6, 0.7):
            mask = _blobs(rng, shape, level)
            if not mask.any():
                continue
            expected = ndimage.distance_transform_edt(~mask) <= radius
            assert np.array_equal(_morphology.dilate_disc(mask, radius), expected), (shape, level)


def _void_fraction_by_distance_transforms(scaled, mask, um_per_px):  # noqa: ANN001, ANN202
    """engine.quality._void_fraction as it was before the fast morphology."""
    radius = max(1.0, quality.VOID_MIN_UM / 2 / max(um_per_px, 1e-6))
    step = max(1, int(radius // 4))
    scaled = ndimage.uniform_filter(scaled, size=step + 2, mode="nearest")[::step, ::step]
    mask, radius = mask[::step, ::step], radius / step
    if mask.sum() < MIN_MEASURE_PX // 4:
        return None
    pad = int(math.ceil(2 * radius)) + 1
    padded = np.pad(mask, pad)
    envelope = ndimage.distance_transform_edt(~padded) <= 2 * radius
    envelope = ndimage.distance_transform_edt(envelope) > 2 * radius
    envelope = envelope[pad:-pad, pad:-pad] | mask
    floor, bulk = np.percentile(scaled[mask], [0.5, 75])
    if (~mask).sum() >= MIN_MEASURE_PX:
        floor = min(float(floor), float(np.median(scaled[~mask])))
    if not bulk > 0:
        return None
    dark = envelope & (scaled < min(floor + 0.1 * (bulk - floor), quality.VOID_LEVEL * bulk))
    core = ndimage.distance_transform_edt(dark) > radius
    opened = (ndimage.distance_transform_edt(~core) <= radius) & dark
    return float(opened.sum() / max(1, envelope.sum()))


def _field_with_bubbles(seed: int, bubbles: int) -> tuple[np.ndarray, np.ndarray]:
    """(512, 512) tissue texture on glass at the right, with dark discs (bubbles) in it."""
    rng = np.random.default_rng(seed)
    scaled = (0.4 + 0.5 * ndimage.uniform_filter(rng.random((512, 512)), 3)).astype(np.float32)
    mask = np.ones((512, 512), bool)
    mask[:, 430:] = False  # glass in view
    scaled[~mask] = 0.02
    yy, xx = np.mgrid[:512, :512]
    for _ in range(bubbles):
        cy, cx, r = rng.integers(40, 470), rng.integers(40, 420), rng.integers(10, 60)
        scaled[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 0.01
    return scaled, mask


@pytest.mark.parametrize("bubbles", [0, 1, 4, 12])
def test_void_fraction_equals_the_distance_transform_version(bubbles: int) -> None:
    for seed in range(3):
        scaled, mask = _field_with_bubbles(seed, bubbles)
        for um in (1.0, 2.0, 2.4):
            expected = _void_fraction_by_distance_transforms(scaled, mask, um)
            got = quality._void_fraction(scaled, mask, um)
            assert got == pytest.approx(expected, abs=1e-9), (seed, um)
            if bubbles >= 4:
                assert got > 0.0  # the check is not vacuous: voids were found


def test_a_dark_speck_too_small_to_be_a_void_is_none() -> None:
    """Smaller than the void disc: nothing survives the opening, at the corner too.

    (The distance-transform version measured an all-True array from a phantom corner
    and could count such a speck at the top-left.)
    """
    scaled, mask = _field_with_bubbles(0, 0)
    scaled[:4, :4] = 0.01
    assert quality._void_fraction(scaled, mask, 2.0) == 0.0


@pytest.mark.parametrize("factor", [1, 2, 3])
def test_tile_saturation_is_the_saturated_share_of_tissue_under_the_box(factor: int) -> None:
    rng = np.random.default_rng(factor)
    absolute = rng.random((90, 120)).astype(np.float32)
    absolute[5:30, 10:50] = 1.0
    absolute[0, 0] = np.nan  # not saturated
    mask = _blobs(rng, absolute.shape, 0.4)
    for box in [(0, 0, 120 * factor, 90 * factor), (30, 12, 170, 140), (7, 7, 9, 9)]:
        x0, y0, x1, y1 = box
        rows = slice(y0 // factor, max(y0 // factor + 1, -(-y1 // factor)))
        cols = slice(x0 // factor, max(x0 // factor + 1, -(-x1 // factor)))
        tissue = absolute[rows, cols][mask[rows, cols]]
        got = tile_saturation(absolute, mask, box, factor)
        if tissue.size < MIN_MEASURE_PX // 4:
            assert got is None
        else:
            expected = float((np.nan_to_num(tissue) >= SATURATED_LEVEL).mean())
            assert got == pytest.approx(expected, abs=1e-12) and 0.0 <= got <= 1.0


@pytest.mark.parametrize("shape", SHAPES + [(257, 300)])
def test_square_closing_and_hole_filling_equal_scipy(shape) -> None:  # noqa: ANN001
    """engine.tissue's closing by the 3 x 3 square and its hole filling."""
    rng = np.random.default_rng(shape[0] * 7 + shape[1])
    for level in (0.3, 0.5, 0.6, 0.7, -1.0, 2.0):  # -1: all True; 2: all False
        mask = ndimage.uniform_filter(rng.random(shape), 3, mode="nearest") > level
        closed = ndimage.binary_closing(mask, structure=np.ones((3, 3), bool), border_value=0)
        assert np.array_equal(_morphology.close_square(mask), closed), level
        assert np.array_equal(_morphology.fill_holes(mask), ndimage.binary_fill_holes(mask))
    ring = np.zeros((9, 9), bool)
    ring[2:7, 2:7] = True
    ring[4, 4] = False  # a hole
    ring[0, 3] = True  # a pixel on the border, and background that touches it
    assert _morphology.fill_holes(ring)[4, 4] and not _morphology.fill_holes(ring)[0, 0]
