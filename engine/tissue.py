"""Tissue mask on the fluorescence / nuclear signal, at overview resolution.

Tissue in FCM is everything stained: bright nuclei, but also dimmer cytoplasm and
stroma, and the dark lumens and fat vacuoles they enclose. A threshold on the raw
signal (Otsu) splits nuclei from stroma and calls most of the specimen background,
so a tile of stroma with a few tumour glands could be skipped: a possible false
negative. The mask therefore works on the local density of signal:

1. smooth the signal with a ``SMOOTH_PX`` box (overview pixels), so that nuclei and
   the stroma between them form one region while glass stays at the noise floor;
2. threshold at ``LEVEL`` of the way from the floor (1st percentile) to the bulk of
   the stained matter (90th percentile), never below ``MIN_SIGNAL``;
3. fill holes (gland lumens, fat inside the specimen) and close small gaps.

Percentile scaling stretches an empty slide's noise until it looks bright, so the
image holds tissue only if its raw signal has structure (``STRUCTURE_RATIO``: bright
nuclei well above the median, which an empty slide's noise has not) or its density is
bimodal (Otsu's two classes apart by ``SEPARATION`` times the dark class's spread).
Doubtful cases fall on the side of tissue: assessing glass costs a tile; skipping
tissue could hide tumour.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._morphology import close_square, fill_holes
from .tiling import Box, overview_window

__all__ = ["otsu_threshold", "tissue_fraction", "tissue_mask"]

FLAT_RANGE = 0.05
MIN_SIGNAL = 0.05
SEPARATION = 5.0
SMOOTH_PX = 7
LEVEL = 0.25
STRUCTURE_RATIO = 2.0


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]."""
    hist, edges = np.histogram(np.clip(values, 0.0, 1.0), bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(hist)
    weight1 = weight0[-1] - weight0
    sum0 = np.cumsum(hist * centres)
    mean0 = sum0 / np.maximum(weight0, 1e-12)
    mean1 = (sum0[-1] - sum0) / np.maximum(weight1, 1e-12)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def _has_structure(median: float, top: float) -> bool:
    """Bright objects (nuclei, the 99th percentile ``top``) well above the ``median``:
    stained tissue, not flat noise."""
    return bool(top > STRUCTURE_RATIO * max(float(median), 1e-3))


def _bimodal(density: np.ndarray) -> bool:
    """Two classes truly apart (tissue and glass), not one noisy mode split by Otsu."""
    split = otsu_threshold(density)
    bright, dark = density[density > split], density[density <= split]
    if not bright.size or not dark.size:
        return False
    gap = float(bright.mean() - dark.mean())
    return gap >= SEPARATION * max(float(dark.std()), 1e-3)


def tissue_mask(signal: np.ndarray, *, flat_is_tissue: bool = False) -> np.ndarray:
    """(h, w) signal in [0, 1] (high on tissue) -> (h, w) bool mask of stained tissue."""
    signal = np.nan_to_num(signal.astype(np.float32))
    low, median, high = np.percentile(signal, [1, 50, 99])
    if high - low < FLAT_RANGE:
        return np.full(signal.shape, flat_is_tissue)
    size = min(SMOOTH_PX, *signal.shape)
    density = ndimage.uniform_filter(signal, size=size, mode="nearest")
    if not _has_structure(median, high) and not _bimodal(density):
        return np.zeros(signal.shape, bool)  # one noisy mode: stretched glass only
    floor, bulk = np.percentile(density, [1, 90])
    threshold = max(float(floor + LEVEL * (bulk - floor)), MIN_SIGNAL)
    # binary_closing by the 3 x 3 square, then binary_fill_holes (engine._morphology:
    # the same pixels, several times faster)
    return fill_holes(close_square(density > threshold))


def tissue_fraction(mask: np.ndarray, box: Box, factor: int) -> float:
    """Fraction of tissue in a source-pixel ``box`` of a mask reduced by ``factor``."""
    region = mask[overview_window(box, factor)]
    return float(region.mean()) if region.size else 0.0
