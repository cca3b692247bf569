"""The ``done`` step: one assessed image's rows, written as SQL statements, not ORM objects.

Runs once per image inside the finishing transaction (:meth:`Store.finish_job`), on the
path from file to alert. Each row is one INSERT (or UPDATE) built from a dict of its
column values, and the digests the audit event carries are computed from those same
dicts: what was written is what was hashed. The ORM's unit of work (identity map,
dirty tracking, one flush per step) cost more than the statements themselves here, so
this step does without it: the statements are built once (below) and executed on the
session's connection with each image's values as parameters. The other job steps keep
the ORM.

Order within the transaction, which the crash tests rely on (they kill the writer at
``INSERT INTO predictions`` and ``INSERT INTO heatmaps``): image details, prediction,
tiles, heatmap, summary, alert, the ``image.assessed`` event, then ``alert.raised``
(the order of the events is part of the hash chain), then the job -> ``done``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from marginwatch.engine.errors import ConflictError, NotFoundError
from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.orm import Session

from . import _digests, audit
from ._job_unread import ended
from .models import Base
from .records import AssessmentRecord, FinishOutcome

__all__ = ["check_held", "held_image_id", "record_assessment"]

logger = logging.getLogger(__name__)

Row = dict[str, Any]

_images, _jobs, _models = (Base.metadata.tables[t] for t in ("images", "jobs", "models"))
_predictions, _tiles, _alerts = (Base.metadata.tables[t] for t in ("predictions", "tiles",
                                                                     "alerts"))
_MODEL_DIGEST = select(_models.c.digest).where(_models.c.id == bindparam("model_id"))
_HELD = select(_jobs.c.state, _jobs.c.lease_owner, _jobs.c.image_id).where(
    _jobs.c.id == bindparam("job_id"))
_HELD_LOCKED = _HELD.with_for_update()
_DESCRIBE_IMAGE = update(_images).where(_images.c.id == bindparam("image_id"))
_INSERT_PREDICTION = insert(_predictions).returning(_predictions.c.id)
_INSERT_TILES = insert(_tiles).returning(_tiles.c.id, sort_by_parameter_order=True)
_INSERT_HEATMAP = insert(Base.metadata.tables["heatmaps"])
_INSERT_SUMMARY = insert(Base.metadata.tables["prediction_summaries"])
_INSERT_ALERT = insert(_alerts).returning(_alerts.c.id)
_CLOSE_JOB = update(_jobs).where(_jobs.c.id == bindparam("job_id"))


def check_held(job_id: int, owner: str, state: str | None, lease_owner: str | None) -> None:
    """Refuse a job that is missing (``state`` None) or not ``processing`` under ``owner``."""
    if state is None:
        raise NotFoundError(f"job {job_id}: no such job")
    if state != "processing" or lease_owner != owner:
        raise ConflictError(
            f"job {job_id}: not leased to {owner!r} (state {state}, "
            f"lease owner {lease_owner!r}); its lease expired or it was finished"
        )


def held_image_id(session: Session, job_id: int, owner: str) -> str:
    """The image of job ``job_id``, which ``owner`` must hold (row locked on PostgreSQL)."""
    db = session.connection()
    query = _HELD_LOCKED if db.dialect.name == "postgresql" else _HELD
    row = db.execute(query, {"job_id": job_id}).first()
    check_held(job_id, owner, *(row[:2] if row is not None else (None, None)))
    assert row is not None
    return row.image_id


def record_assessment(
    session: Session, job_id: int, image_id: str, result: AssessmentRecord, actor: str,
    now: datetime,
) -> FinishOutcome:
    """Image details, prediction, tiles, heatmap, alert if positive, audit, job -> done."""
    db = session.connection()
    model_digest = db.execute(_MODEL_DIGEST, {"model_id": result.model_id}).scalar()
    if model_digest is None:
        raise NotFoundError(f"model {result.model_id}: not registered")
    db.execute(_DESCRIBE_IMAGE, {"image_id": image_id, **_image_details(result)})
    prediction = _prediction_row(image_id, result, now)
    prediction["id"] = db.execute(_INSERT_PREDICTION, prediction).scalar_one()
    tiles = _insert_tiles(db, prediction["id"], result)
    heatmap = None
    if result.heatmap_png is not None:
        heatmap = {"prediction_id": prediction["id"], "png": result.heatmap_png,
                   "scale": result.heatmap_scale or 1.0}
        db.execute(_INSERT_HEATMAP, heatmap)
    if result.summary_kind is not None and result.summary_data is not None:
        db.execute(_INSERT_SUMMARY, {"prediction_id": prediction["id"],
                                     "kind": result.summary_kind, "data": result.summary_data})
    alert = None
    if result.decision:
        alert = _alert_row(image_id, job_id, prediction, result, now)
        alert["id"] = db.execute(_INSERT_ALERT, alert).scalar_one()
    payload = _assessed_payload(job_id, model_digest, prediction, tiles, heatmap, result)
    event = audit.append_event(session, "image.assessed", image_id, payload, actor, now)
    if alert is not None:
        event = audit.append_event(session, "alert.raised", image_id, {
            "alert_id": alert["id"],
            "kind": alert["kind"],
            "prediction_id": prediction["id"],
            "digests": _digests.alert_digests(alert),
        }, actor, now)
    db.execute(_CLOSE_JOB, {"job_id": job_id, **ended("done", now),
                            "prediction_id": prediction["id"], "error_class": None,
                            "error_message": None})
    logger.info("image %s assessed: prediction %d decision=%s", image_id, prediction["id"],
                result.decision)
    return FinishOutcome(prediction_id=prediction["id"],
                         alert_id=None if alert is None else alert["id"], audit_seq=event.seq)


def _image_details(result: AssessmentRecord) -> Row:
    """What reading the file told us about it: its bytes' hash, shape, scale and profile."""
    return {"sha256": result.sha256, "shape_json": json.dumps(list(result.shape)),
            "um_per_px": result.um_per_px, "um_per_px_source": result.um_per_px_source,
            "profile": result.profile}


def _prediction_row(image_id: str, result: AssessmentRecord, now: datetime) -> Row:
    """Every column of the prediction but its id (the digest covers all of them)."""
    return {
        "image_id": image_id,
        "model_id": result.model_id,
        "backend": result.backend,
        "device": result.device,
        "precision": result.precision,
        "raw_probability": result.raw_probability,
        "probability": result.probability,
        "decision": result.decision,
        "threshold": result.threshold,
        "driving_tile": result.driving_tile,
        "timings_json": audit.canonical_json({k: float(v) for k, v in result.timings.items()}),
        "created_at": now,
        "quality_json": None if result.quality is None else audit.canonical_json(result.quality),
    }


def _insert_tiles(db: Connection, prediction_id: int, result: AssessmentRecord) -> list[Row]:
    """The prediction's tiles (16 to hundreds) as one bulk INSERT ... RETURNING id."""
    tiles = [
        {"prediction_id": prediction_id, "idx": i, "x0": t.box[0], "y0": t.box[1],
         "x1": t.box[2], "y1": t.box[3], "probability": t.probability}
        for i, t in enumerate(result.tiles)
    ]
    if tiles:
        for row, tile_id in zip(tiles, db.execute(_INSERT_TILES, tiles).scalars(), strict=True):
            row["id"] = tile_id
    return tiles


def _alert_row(image_id: str, job_id: int, prediction: Mapping[str, Any],
               result: AssessmentRecord, now: datetime) -> Row:
    """The tumour-at-margin alert of a positive decision, not yet acknowledged."""
    return {
        "kind": "tumour-at-margin",
        "image_id": image_id,
        "prediction_id": prediction["id"],
        "job_id": job_id,
        "message": (
            f"tumour at margin: p={result.probability:.3f} >= threshold {result.threshold:.3f}"
        ),
        "raised_at": now,
        "acknowledged_by": None,
        "acknowledged_at": None,
        "ack_note": None,
    }


def _assessed_payload(
    job_id: int,
    model_digest: str,
    prediction: Mapping[str, Any],
    tiles: list[Row],
    heatmap: Row | None,
    result: AssessmentRecord,
) -> dict[str, Any]:
    """The ``image.assessed`` payload: ids, the decision and the digests of the rows written."""
    return {
        "job_id": job_id,
        "prediction_id": prediction["id"],
        "model_digest": model_digest,
        "sha256": result.sha256,
        "backend": result.backend,
        "device": result.device,
        "precision": result.precision,
        "probability": result.probability,
        "raw_probability": result.raw_probability,
        "decision": result.decision,
        "threshold": result.threshold,
        "tiles": len(result.tiles),
        "digests": _digests.assessment_digests(prediction, tiles, heatmap),
        "quality": _quality_summary(result.quality),
    }


def _quality_summary(quality: Any) -> dict[str, Any] | None:
    """The gate's values and tile counts for the audit trail (thresholds are in the row)."""
    if not quality:
        return None
    return {
        "passed": quality.get("passed"),
        "values": {k: m.get("value") for k, m in quality.get("measurements", {}).items()},
        "tiles": quality.get("tiles"),
    }
