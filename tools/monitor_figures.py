"""The monitoring report's figures: reliability diagram, ROC and trends (PNG, matplotlib).

The reliability diagram and the ROC are the evaluation report's own
(:func:`marginwatch.tools._report.plot_reliability` / ``plot_roc``); with no ground
truth in range each figure is written empty, saying so. No torch here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

from ._report import plot_reliability, plot_roc  # noqa: E402
from .monitoring import TrendPoint  # noqa: E402

__all__ = ["FIGURES", "write_figures"]

FIGURES = ("reliability.png", "roc.png", "trend.png")
_TREND_METRICS = (("sensitivity", "Sensitivity"), ("specificity", "Specificity"),
                  ("auc", "AUC"), ("brier", "Brier score"))


def _empty(path: Path, title: str, why: str) -> None:
    fig, ax = plt.subplots(figsize=(4.6, 4.6), dpi=120)
    ax.axis("off")
    ax.set_title(title)
    ax.text(0.5, 0.5, why, ha="center", va="center", wrap=True, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _trend(path: Path, points: Sequence[TrendPoint], card: Mapping[str, Any]) -> None:
    fig, ax = plt.subplots(figsize=(7.2, 4.2), dpi=120)
    x = np.arange(len(points))
    card_keys = {"sensitivity": "val_sensitivity", "specificity": "val_specificity",
                 "auc": "val_auc", "brier": "val_brier"}
    for (name, label), colour in zip(_TREND_METRICS, ("C0", "C1", "C2", "C3"), strict=True):
        values = [getattr(p, name) for p in points]
        ax.plot(x, values, marker="o", lw=1.5, color=colour, label=label)
        reference = card.get(card_keys[name])
        if isinstance(reference, (int, float)) and not math.isnan(reference):
            ax.axhline(float(reference), color=colour, lw=0.8, ls="--")
    ax.set_xticks(x, [f"{p.label}\n(n={p.n_images})" for p in points], fontsize=7)
    ax.set(ylim=(-0.02, 1.02), ylabel="value", title="Trend (dashed: model card validation)")
    ax.legend(loc="lower left", fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_figures(
    folder: Path,
    labels: Sequence[int] | np.ndarray,
    probabilities: Sequence[float] | np.ndarray,
    points: Sequence[TrendPoint],
    card_metrics: Mapping[str, Any],
) -> list[Path]:
    """reliability.png, roc.png, trend.png in ``folder``; empty ones when no truth."""
    folder.mkdir(parents=True, exist_ok=True)
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    paths = [folder / name for name in FIGURES]
    if y.size == 0:
        why = "no ground truth in range"
        _empty(paths[0], "Reliability", why)
        _empty(paths[1], "ROC (image level)", why)
        _empty(paths[2], "Trend", why)
        return paths
    plot_reliability({"site": (y, p)}, paths[0])
    plot_roc({"site": (y, p)}, paths[1])
    _trend(paths[2], points, card_metrics)
    return paths
