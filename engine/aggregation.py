"""Tile probabilities -> one image probability, and the tile that drove it.

``max`` (default: one tumour tile at the margin is a positive margin), ``mean``,
``noisy-or`` (1 - prod(1 - p): independent chances) and ``top3-mean``.
The driving tile is the most probable tile for every method.
"""

from __future__ import annotations

import numpy as np

__all__ = ["METHODS", "aggregate"]

METHODS = ("max", "mean", "noisy-or", "top3-mean")


def aggregate(probabilities: np.ndarray, method: str = "max") -> tuple[float, int]:
    """``probabilities`` (T,) in [0, 1] -> (image probability, index of the driving tile)."""
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if p.size == 0:
        raise ValueError("cannot aggregate zero tiles")
    driving = int(np.argmax(p))
    if method == "max":
        value = p[driving]
    elif method == "mean":
        value = p.mean()
    elif method == "noisy-or":
        value = 1.0 - np.exp(np.sum(np.log1p(-np.clip(p, 0.0, 1.0 - 1e-12))))
    elif method == "top3-mean":
        value = np.sort(p)[-3:].mean()
    else:
        raise ValueError(f"unknown aggregation {method!r}; expected one of {METHODS}")
    return float(np.clip(value, 0.0, 1.0)), driving
