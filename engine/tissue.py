"""Tissue mask on the fluorescence / nuclear signal, at overview resolution.

Otsu's threshold separates tissue from glass; an image whose signal is flat (its 1st
and 99th percentiles within ``FLAT_RANGE``) is all tissue or all background by its
level. The threshold never drops below ``MIN_SIGNAL`` so sensor noise is not tissue.
"""

from __future__ import annotations

import numpy as np

from .tiling import Box

__all__ = ["otsu_threshold", "tissue_fraction", "tissue_mask"]

FLAT_RANGE = 0.05
MIN_SIGNAL = 0.05


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


def tissue_mask(signal: np.ndarray) -> np.ndarray:
    """(h, w) signal in [0, 1] (high on tissue) -> (h, w) bool mask."""
    signal = np.nan_to_num(signal.astype(np.float32))
    low, high = np.percentile(signal, [1, 99])
    if high - low < FLAT_RANGE:
        level = float(signal.mean())
        return np.full(signal.shape, level > 2 * MIN_SIGNAL)
    return signal > max(otsu_threshold(signal), MIN_SIGNAL)


def tissue_fraction(mask: np.ndarray, box: Box, factor: int) -> float:
    """Fraction of tissue in a source-pixel ``box`` of a mask reduced by ``factor``."""
    x0, y0, x1, y1 = box
    region = mask[y0 // factor : max(y0 // factor + 1, -(-y1 // factor)),
                  x0 // factor : max(x0 // factor + 1, -(-x1 // factor))]
    return float(region.mean()) if region.size else 0.0
