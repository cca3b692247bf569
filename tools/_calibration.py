"""What validation decides for the model card: temperature, threshold and the metrics there.

After the last epoch, :func:`calibrate` fits the temperature on the validation images'
driving logits (tools._objective), chooses the threshold for the target sensitivity (and,
when one is set, the target specificity: the middle of the thresholds meeting both) on
the calibrated image probabilities, and measures validation at that threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from rich.console import Console

from . import metrics
from ._dataset import TileCache, aggregate_images
from ._objective import TEMPERATURE_RANGE, fit_temperature

if TYPE_CHECKING:
    from ._trainer import Trainer

__all__ = ["Calibration", "calibrate"]


@dataclass(frozen=True)
class Calibration:
    """What validation decides for the card: temperature, threshold and the metrics at them."""

    temperature: float
    at_bound: bool
    threshold: float
    metrics: dict[str, float]


def calibrate(
    trainer: Trainer, target_sensitivity: float, console: Console,
    target_specificity: float | None = None,
) -> Calibration:
    """Temperature, then the threshold and the metrics at it, all on the validation images."""
    val = trainer.val_set
    logits = trainer.tile_logits(val)
    temperature, at_bound = _fit_temperature(val, logits, trainer.engine.aggregation, console)
    val_p, _ = aggregate_images(val, logits, temperature, trainer.engine.aggregation)
    threshold = _choose_threshold(val.labels, val_p, target_sensitivity, target_specificity)
    val_metrics = _val_metrics(val.labels, val_p, threshold)
    return Calibration(temperature, at_bound, threshold, val_metrics)


def _fit_temperature(
    val: TileCache, logits: torch.Tensor, aggregation: str, console: Console
) -> tuple[float, bool]:
    """Temperature on the images' driving logits; warn when it sits at a bound of its search."""
    _, driving = aggregate_images(val, logits, 1.0, aggregation)
    temperature = fit_temperature(driving, torch.as_tensor(val.labels))
    low, high = TEMPERATURE_RANGE
    at_bound = not low * 1.01 < temperature < high / 1.01
    if at_bound:
        console.print(
            f"[yellow]temperature {temperature:.4g} is at a bound of its search range "
            f"{list(TEMPERATURE_RANGE)}: the probabilities are not calibrated"
        )
    return temperature, at_bound


def _choose_threshold(labels: np.ndarray, val_p: np.ndarray, target_sensitivity: float,
                      target_specificity: float | None = None) -> float:
    """The threshold for the targets (:func:`metrics.operating_threshold`); 0.5 when
    undefined; never exactly 0 or 1."""
    threshold = metrics.operating_threshold(labels, val_p, target_sensitivity,
                                            target_specificity)
    return float(np.clip(threshold if not math.isnan(threshold) else 0.5, 1e-4, 1 - 1e-4))


def _val_metrics(labels: np.ndarray, val_p: np.ndarray, threshold: float) -> dict[str, float]:
    """Validation's discrimination, calibration and operating point at ``threshold``."""
    decisions = val_p >= threshold
    return {
        "val_auc": metrics.roc_auc(labels, val_p),
        "val_brier": metrics.brier_score(labels, val_p),
        "val_ece": metrics.expected_calibration_error(labels, val_p),
        "val_sensitivity": metrics.sensitivity(labels, decisions),
        "val_specificity": metrics.specificity(labels, decisions),
    }
