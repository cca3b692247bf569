"""Quality-gate thresholds from training images (``marginwatch train`` writes them).

The gate (engine.quality) should pass the images a model was trained on and stop the
ones no one would read. Thresholds are therefore set from the *clean* training images:
for a check where low is bad, ``LOW_MARGINS[check]`` x its ``PERCENTILE``-th lowest
value; where high is bad, its ``100 - PERCENTILE``-th value x ``HIGH_MARGINS[check]``
(with a floor, so a set where nothing saturates still tolerates a little).
``kept_tissue_share_min`` is a rule (half the tissue), not a statistic.

The margins are per check because the training images come from one centre, and a
second centre moves some measurements much more than others (docs/quality.md): the
synthetic external centre's weaker stain gives signal ranges about 0.6 x the
development centre's, and its wider, more vignetted strips seam scores up to 1.4 x.
Signal range and seam score therefore get wider margins than focus or tissue.

:func:`rederive` recomputes an existing model's thresholds from its own training
images (the training split recorded in ``training.json``) with the current margins,
and rewrites its card (``marginwatch quality-thresholds MODEL MANIFEST``).

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

__all__ = [
    "MAX_IMAGES",
    "derive_thresholds",
    "measure_image",
    "rederive",
    "thresholds_from_images",
]

logger = logging.getLogger(__name__)

PERCENTILE = 1.0
LOW_MARGINS = {"focus": 0.6, "signal_range": 0.45, "tissue_fraction": 0.6}
HIGH_MARGINS = {"saturated_fraction": 1.5, "void_fraction": 1.5, "seam_score": 1.65}
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
            low = LOW_MARGINS[name] * float(np.percentile(column, PERCENTILE))
            values[field] = round(low, 4)
        else:
            high = HIGH_MARGINS[name] * float(np.percentile(column, 100 - PERCENTILE))
            values[field] = round(max(high, HIGH_FLOORS[name]), 4)
    margins = ", ".join(f"{k} x {v:g}" for k, v in {**LOW_MARGINS, **HIGH_MARGINS}.items())
    return QualityThresholds(
        **values,
        kept_tissue_share_min=0.5,
        derived_from=(
            f"{len(measurements)} {source}: percentile {PERCENTILE:g} (low bad) or "
            f"{100 - PERCENTILE:g} (high bad), times {margins}"
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


def rederive(
    model_dir: str | os.PathLike[str], manifest_path: str | os.PathLike[str]
) -> tuple[QualityThresholds | None, QualityThresholds]:
    """Re-derive the card thresholds of the model in ``model_dir`` from its training
    images and rewrite the model folder; returns (old, new) thresholds.

    ``manifest_path`` must be the manifest the model was trained on (its SHA-256 is
    checked against ``training.json``), whose ``split_patients["train"]`` names the
    training images. The weights are unchanged; the card, and so the model's digest,
    change (``training.json`` records the new digest and the re-derivation).
    """
    import json
    from pathlib import Path

    from marginwatch.engine.errors import ConfigError, ModelError
    from marginwatch.engine.model import load_model

    from ._manifest import load_manifest

    folder = Path(model_dir)
    training_path = folder / "training.json"
    try:
        training = json.loads(training_path.read_text())
        train_patients = set(training["split_patients"]["train"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(
            f"{training_path}: no training record with split_patients.train ({exc}); "
            "thresholds can only be re-derived for a model made by marginwatch train"
        ) from exc
    manifest = load_manifest(manifest_path)
    if manifest.sha256 != training.get("manifest_sha256"):
        raise ConfigError(
            f"{manifest_path}: not the manifest this model was trained on (SHA-256 "
            f"{manifest.sha256[:12]}..., training.json has "
            f"{str(training.get('manifest_sha256'))[:12]}...)"
        )
    paths = [row.path for row in manifest.rows if row.patient in train_patients]
    model = load_model(folder)
    old = model.card.quality
    new = thresholds_from_images(paths, model)
    if new is None:
        raise ModelError(f"{manifest_path}: none of the training images could be measured")
    card = model.update_card(quality=new)
    # only the card is rewritten (atomically): the weights file stays byte for byte
    card_path = folder / "model.json"
    temp = folder / ".model.json.tmp"
    try:
        temp.write_text(card.to_json(), encoding="utf-8")
        os.replace(temp, card_path)
    except OSError as exc:
        why = exc.strerror or exc
        raise ModelError(f"{card_path}: cannot write the model card: {why}") from exc
    training["model_digest"] = load_model(folder).digest
    training["quality_rederived"] = {"thresholds": new.model_dump(), "images": len(paths)}
    training_path.write_text(json.dumps(training, indent=2) + "\n")  # as train writes it
    return old, new
