"""Quality-gate thresholds from training images (``marginwatch train`` writes them).

The gate (engine.quality) should pass the images a model was trained on and stop the
ones no one would read. Thresholds are therefore set from the *clean* training images:
for a check where low is bad, ``LOW_MARGIN`` x its ``PERCENTILE``-th lowest value; where
high is bad, its ``100 - PERCENTILE``-th value x ``HIGH_MARGIN`` (with a floor, so a
set where nothing saturates still tolerates a little). ``kept_tissue_share_min`` is a
rule (half the tissue), not a statistic.

:func:`measure_image` reads an image as the engine does (prepare, then its tiles,
without the network); :func:`derive_thresholds` turns many such measurements into a
:class:`~marginwatch.engine.card.QualityThresholds`. At most ``MAX_IMAGES`` images
(evenly spaced, deterministic) are measured, so training does not wait long for it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
from marginwatch.engine.assessment import check_quality, prepare
from marginwatch.engine.card import QualityThresholds
from marginwatch.engine.config import EngineConfig
from marginwatch.engine.errors import InputError
from marginwatch.engine.model import Model

__all__ = ["MAX_IMAGES", "derive_thresholds", "measure_image", "thresholds_from_images"]

logger = logging.getLogger(__name__)

PERCENTILE = 1.0
LOW_MARGIN = 0.6
HIGH_MARGIN = 1.5
MAX_IMAGES = 120
# floors for "above" checks: never stricter than this, whatever the training set shows
HIGH_FLOORS = {"saturated_fraction": 0.05, "void_fraction": 0.02, "seam_score": 3.0}
FIELDS = {
    "focus": "focus_min",
    "signal_range": "signal_range_min",
    "tissue_fraction": "tissue_fraction_min",
    "saturated_fraction": "saturated_fraction_max",
    "void_fraction": "void_fraction_max",
    "seam_score": "seam_score_max",
}


def measure_image(
    path: str | os.PathLike[str], model: Model, engine: EngineConfig | None = None
) -> dict[str, float | None]:
    """The image-level measurements of one image ({name: value}); reads every tile."""
    prepared = prepare(path, model, engine)
    with prepared:
        for _ in prepared.iter_tiles(8):
            pass
    report = check_quality(prepared, model, engine)
    return {m.name: m.value for m in report.measurements}


def derive_thresholds(
    measurements: Sequence[Mapping[str, float | None]], *, source: str = "training images"
) -> QualityThresholds:
    """Thresholds from measurements of clean images (module docstring)."""
    if not measurements:
        raise ValueError("no measurements to derive quality thresholds from")
    values: dict[str, float] = {}
    for name, field in FIELDS.items():
        column = np.array([m[name] for m in measurements if m.get(name) is not None], float)
        if column.size == 0:
            continue
        if field.endswith("_min"):
            values[field] = round(LOW_MARGIN * float(np.percentile(column, PERCENTILE)), 4)
        else:
            high = HIGH_MARGIN * float(np.percentile(column, 100 - PERCENTILE))
            values[field] = round(max(high, HIGH_FLOORS[name]), 4)
    return QualityThresholds(
        **values,
        kept_tissue_share_min=0.5,
        derived_from=(
            f"{len(measurements)} {source}: percentile {PERCENTILE:g} x {LOW_MARGIN:g} "
            f"(low bad), percentile {100 - PERCENTILE:g} x {HIGH_MARGIN:g} (high bad)"
        ),
    )


def thresholds_from_images(
    paths: Sequence[str | os.PathLike[str]],
    model: Model,
    engine: EngineConfig | None = None,
    *,
    max_images: int = MAX_IMAGES,
) -> QualityThresholds | None:
    """Measure up to ``max_images`` of ``paths`` (evenly spaced) and derive thresholds.

    Images the engine cannot read are skipped (training reports them elsewhere);
    None when no image could be measured.
    """
    if not paths:
        return None
    picks = np.unique(np.linspace(0, len(paths) - 1, min(len(paths), max_images)).round())
    measured = []
    for index in picks.astype(int):
        try:
            measured.append(measure_image(paths[index], model, engine))
        except InputError as exc:
            logger.info("quality thresholds: image %d skipped (%s)", index, type(exc).__name__)
    if not measured:
        return None
    return derive_thresholds(measured)
