"""``marginwatch evaluate MODEL MANIFEST [--external MANIFEST] --report DIR``.

Every image goes through the engine exactly as in the daemon: ``prepare`` (read, check,
tile at the card's micrometres per pixel, normalise) -> the selected backend ->
``finish`` (calibrated tile probabilities, aggregation, decision at the card's
threshold, Grad-CAM heatmap). An image the engine cannot assess is listed as
``not assessed`` in predictions.csv and excluded from the metrics, and the report says
how many there were: it is never silently counted as benign. The metrics are those of
the assessable images; per set the report counts the images the quality gate stopped
and by which check (``n_gated``, ``gated_by``).

Writes to DIR: ``report.md``, ``metrics.json``, ``predictions.csv``, ``roc.png``,
``reliability.png`` and ``gallery/`` (Grad-CAM overlays of true/false positives and
negatives). Metrics come from tools/metrics.py with patient-level bootstrap CIs.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from marginwatch.engine.config import Config, load_config
from marginwatch.engine.errors import InputError, ManifestError
from rich.console import Console
from rich.progress import Progress

from . import metrics
from ._manifest import Manifest, load_manifest
from ._progress import progress_bar
from ._report import GalleryItem, plot_reliability, plot_roc, write_gallery, write_markdown

__all__ = ["evaluate"]

logger = logging.getLogger(__name__)


@dataclass
class _Scored:
    """One manifest's engine results, in manifest order."""

    manifest: Manifest
    probability: list[float | None]  # None: not assessed
    decision: list[bool | None]
    reasons: list[str | None]
    gated: list[tuple[str, ...]]  # per image: the quality checks it failed (none: passed)
    seconds: list[float]
    gallery: list[GalleryItem]


def _outcome(label: int, decision: bool) -> str:
    return ("TP" if decision else "FN") if label else ("FP" if decision else "TN")


def _score(
    set_name: str,
    manifest: Manifest,
    model: Any,
    config: Config,
    backend: Any,
    progress: Progress,
    per_outcome: int,
) -> _Scored:
    from marginwatch.engine.assessment import assess

    probability: list[float | None] = []
    decision: list[bool | None] = []
    reasons: list[str | None] = []
    gated: list[tuple[str, ...]] = []
    seconds: list[float] = []
    # keep only the best gallery candidates: (outcome) -> [(sort key, item)]
    best: dict[str, list[tuple[float, GalleryItem]]] = {}
    task = progress.add_task(f"assessing {set_name}", total=len(manifest))
    for row in manifest.rows:
        started = time.perf_counter()
        try:
            result = assess(row.path, model, config, backend)
        except InputError as exc:
            probability.append(None)
            decision.append(None)
            reasons.append(f"{type(exc).__name__}: {exc}")
            report = getattr(exc, "report", None)  # QualityGateError: which checks failed
            gated.append(tuple(m.name for m in report.failed) if report is not None else ())
            logger.warning("%s image not assessed (%s)", set_name, type(exc).__name__)
        else:
            probability.append(result.probability)
            decision.append(result.decision)
            reasons.append(None)
            gated.append(())
            outcome = _outcome(row.label, result.decision)
            key = result.probability if outcome in ("TP", "FP") else -result.probability
            bucket = best.setdefault(outcome, [])
            bucket.append(
                (
                    key,
                    GalleryItem(
                        set_name,
                        outcome,
                        row.image,
                        result.probability,
                        result.heatmap,
                        result.preview_rgb,
                    ),
                )
            )
            bucket.sort(key=lambda kv: -kv[0])
            del bucket[per_outcome:]
        seconds.append(time.perf_counter() - started)
        progress.update(task, advance=1)
    gallery = [item for outcome in ("TP", "FP", "FN", "TN") for _, item in best.get(outcome, [])]
    return _Scored(manifest, probability, decision, reasons, gated, seconds, gallery)


def _set_summary(
    scored: _Scored, threshold: float, resamples: int, seed: int
) -> tuple[dict[str, Any], tuple[np.ndarray, np.ndarray]]:
    rows = scored.manifest.rows
    ok = [i for i, p in enumerate(scored.probability) if p is not None]
    y = np.array([rows[i].label for i in ok], dtype=int)
    p = np.array([scored.probability[i] for i in ok], dtype=float)
    groups = np.array([rows[i].patient for i in ok])
    summary = metrics.summarise(y, p, groups, threshold, resamples=resamples, seed=seed)
    cm = metrics.confusion_matrix(y, p >= threshold)
    return {
        "manifest": str(scored.manifest.source),
        "manifest_sha256": scored.manifest.sha256,
        "n_images": len(rows),
        "n_assessed": len(ok),
        "n_positive": int(y.sum()),
        "n_patients": len(set(groups.tolist())),
        "centres": sorted({r.centre for r in rows}),
        "n_gated": sum(1 for g in scored.gated if g),
        "gated_by": dict(sorted(Counter(n for g in scored.gated for n in g).items())),
        "not_assessed": [
            {"image": rows[i].image, "reason": scored.reasons[i]}
            for i in range(len(rows))
            if scored.probability[i] is None
        ],
        "metrics": {name: m.as_dict() for name, m in summary.items()},
        "confusion_matrix": cm.as_dict(),
        "seconds_per_image_median": float(np.median(scored.seconds)) if scored.seconds else None,
    }, (y, p)


def _write_predictions(path: Path, scored: dict[str, _Scored]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["set", "image", "patient", "centre", "label", "probability", "decision"])
        for set_name, s in scored.items():
            for i, row in enumerate(s.manifest.rows):
                p, d = s.probability[i], s.decision[i]
                writer.writerow(
                    [
                        set_name,
                        row.image,
                        row.patient,
                        row.centre,
                        "tumour" if row.label else "benign",
                        "" if p is None else repr(float(p)),  # exact: metrics can be recomputed
                        "not assessed" if d is None else ("tumour" if d else "benign"),
                    ]
                )


def evaluate(
    model_path: str | Path,
    manifest_path: str | Path,
    report: str | Path,
    *,
    external: str | Path | None = None,
    config: Config | None = None,
    resamples: int = 2000,
    seed: int = 0,
    gallery_per_outcome: int = 2,
    console: Console | None = None,
) -> dict[str, Any]:
    """Evaluate a model artefact on one or two manifests; write the report; return metrics."""
    from marginwatch.engine.backends import select_backend
    from marginwatch.engine.model import load_model

    config = config or load_config()
    console = console or Console(stderr=True)
    report = Path(report)
    manifests = {"internal": load_manifest(manifest_path)}
    if external is not None:
        manifests["external"] = load_manifest(external)
    model = load_model(model_path)
    backend = select_backend(model, config.engine)
    report.mkdir(parents=True, exist_ok=True)
    if any(report.glob("gallery/*.png")):
        for old in report.glob("gallery/*.png"):
            old.unlink()

    scored: dict[str, _Scored] = {}
    with progress_bar(console) as bar:
        for name, manifest in manifests.items():
            scored[name] = _score(name, manifest, model, config, backend, bar, gallery_per_outcome)

    card = model.card
    sets: dict[str, Any] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, s in scored.items():
        sets[name], (y, p) = _set_summary(s, card.threshold, resamples, seed)
        if len(y) == 0:
            raise ManifestError(f"{s.manifest.source}: no image could be assessed; see the log")
        curves[name] = (y, p)
    result = {
        "research_use_only": True,
        "model": {
            "path": str(model_path),
            "digest": model.digest,
            "architecture": card.architecture,
            "input_size_px": card.input_size_px,
            "um_per_px": card.um_per_px,
            "profile": card.device_profile.name,
            "temperature": card.temperature,
            "threshold": card.threshold,
            "synthetic_demo": card.synthetic_demo,
            "training_data_sha256": card.training_data_sha256,
        },
        "backend": backend.name,
        "device": backend.device,
        "aggregation": config.engine.aggregation,
        "bootstrap": {"unit": "patient", "resamples": resamples, "level": 0.95, "seed": seed},
        "sets": sets,
    }
    plot_roc(curves, report / "roc.png")
    plot_reliability(curves, report / "reliability.png")
    gallery = write_gallery([i for s in scored.values() for i in s.gallery], report / "gallery")
    _write_predictions(report / "predictions.csv", scored)
    (report / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(report / "report.md", result, gallery)
    for name, data in sets.items():
        m = data["metrics"]
        shown = "  ".join(
            f"{k} {'undefined' if m[k]['value'] is None else format(m[k]['value'], '.3f')}"
            for k in ("sensitivity", "specificity", "auc", "brier")
        )
        gated = ", ".join(f"{k} {v}" for k, v in data["gated_by"].items())
        console.print(
            f"{name}: {data['n_assessed']} images  {shown}  "
            f"(quality gate: {data['n_gated']} not assessable{f': {gated}' if gated else ''})"
        )
    console.print(f"report: {report / 'report.md'}")
    return result
