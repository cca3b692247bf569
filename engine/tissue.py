"""Tissue mask on the fluorescence / nuclear signal, at overview resolution.

Otsu's threshold separates tissue from glass, but only when the two classes are truly
apart: the bright class's mean must exceed the dark class's by ``SEPARATION`` times the
dark class's spread. Pure sensor noise (one Gaussian mode, which Otsu splits at about
1.6 sigma) therefore gives no tissue, even after percentile scaling stretched it. An
image whose signal is flat (1st to 99th percentile within ``FLAT_RANGE``) is all
tissue or all glass as the caller says (``flat_is_tissue``, from the absolute level).
"""

from __future__ import annotations

import numpy as np

from .tiling import Box

__all__ = ["otsu_threshold", "tissue_fraction", "tissue_mask"]

FLAT_RANGE = 0.05
MIN_SIGNAL = 0.05
SEPARATION = 5.0


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


def tissue_mask(signal: np.ndarray, *, flat_is_tissue: bool = False) -> np.ndarray:
    """(h, w) signal in [0, 1] (high on tissue) -> (h, w) bool mask."""
    signal = np.nan_to_num(signal.astype(np.float32))
    low, high = np.percentile(signal, [1, 99])
    if high - low < FLAT_RANGE:
        return np.full(signal.shape, flat_is_tissue)
    threshold = max(otsu_threshold(signal), MIN_SIGNAL)
    mask = signal > threshold
    dark = signal[~mask]
    if mask.any() and dark.size:
        gap = float(signal[mask].mean() - dark.mean())
        if gap < SEPARATION * max(float(dark.std()), 1e-3):
            return np.zeros(signal.shape, bool)  # one noisy mode: glass only
    return mask


def tissue_fraction(mask: np.ndarray, box: Box, factor: int) -> float:
    """Fraction of tissue in a source-pixel ``box`` of a mask reduced by ``factor``."""
    x0, y0, x1, y1 = box
    region = mask[
        y0 // factor : max(y0 // factor + 1, -(-y1 // factor)),
        x0 // factor : max(x0 // factor + 1, -(-x1 // factor)),
    ]
    return float(region.mean()) if region.size else 0.0
