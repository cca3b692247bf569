"""Job lifecycle steps that run inside a Store's writing transaction (one session).

discover -> claim -> (record_assessment | close_duplicate | fail_or_retry), and the
ways a job goes back: put_back (released), requeue_lost (lease expired, owner gone).

The steps in which the file is not read (superseded, moved, waiting for a file still
changing, put back) are in :mod:`._job_unread`, and the failures (retry or fail for
good, a lost lease put back) in :mod:`._job_failures`; both are re-exported here.

Kept apart from :mod:`store` so each stays readable; nothing here commits: the caller's
``with store._write()`` block is the transaction, so a crash between any two steps leaves
all of a job's records or none of them (tests/test_storage_crash.py kills a writer
mid-transaction, at statements it picks from the outside).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from marginwatch.engine.errors import ConflictError, NotFoundError
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from . import _cases, _digests, audit
from ._job_failures import fail_final, fail_or_retry, requeue_lost
from ._job_unread import (
    _same_inode,
    close_moved,
    end_job,
    moved_to,
    put_back,
    supersede,
    wait_for_change,
)
from ._paths import path_key
from .models import Alert, Heatmap, Image, Job, ModelRow, Prediction, PredictionSummary, Tile
from .records import (
    AssessmentRecord,
    ClaimedJob,
    Discovery,
    FinishOutcome,
    Placement,
)

__all__ = [
    "claim",
    "close_duplicate",
    "close_moved",
    "discover",
    "expired",
    "fail_final",
    "fail_or_retry",
    "held_job",
    "moved_to",
    "orphaned",
    "put_back",
    "record_assessment",
    "requeue_lost",
    "supersede",
    "wait_for_change",
]

logger = logging.getLogger(__name__)

def discover(
    session: Session,
    root_key: str,
    rel_path: str,
    size: int,
    mtime_ns: int,
    actor: str,
    now: datetime,
    *,
    placement: Placement | None = None,
    inode: int | None = None,
    lease: tuple[str, datetime] | None = None,
) -> Discovery | None:
    """A new file version and its pending job (audited); None if already recorded.

    With ``placement`` the image goes into its case (see :func:`_cases.place`); with
    ``lease`` (owner, expiry) the new job is leased at once, as :func:`claim` would.
    """
    key = path_key(rel_path)
    seen = session.scalar(
        select(Image.id).where(
            Image.root_key == root_key,
            Image.path_key == key,
            Image.rel_path == rel_path,
            Image.size == size,
            Image.mtime_ns == mtime_ns,
        )
    )
    if seen is not None:
        return None
    previous = session.scalar(  # the latest earlier version of this file, if any
        select(Image.id)
        .where(Image.root_key == root_key, Image.path_key == key, Image.rel_path == rel_path)
        .order_by(Image.first_seen.desc(), Image.id.desc())
        .limit(1)
    )
    image = Image(
        root_key=root_key, rel_path=rel_path, size=size, mtime_ns=mtime_ns, first_seen=now,
        previous_id=previous, inode=inode,
    )
    session.add(image)
    session.flush()
    job = Job(image_id=image.id, state="pending", attempts=0, created_at=now, updated_at=now)
    session.add(job)
    session.flush()
    payload: dict[str, object] = {
        "job_id": job.id, "root_key": root_key, "size": size, "mtime_ns": mtime_ns
    }
    if previous is not None:  # a new version of a file seen before: linked, in the chain
        payload["previous_image_id"] = previous
    if placement is not None:
        payload["case_id"] = _cases.place(session, image, placement, actor, now)
        payload["location"] = placement.location
        payload["location_source"] = placement.source
        if placement.issue is not None:
            payload["location_issue"] = placement.issue
    # The path is in the images row (access-controlled); the audit payload and the
    # logs carry ids only.
    audit.append_event(session, "image.discovered", image.id, payload, actor, now)
    logger.info("image %s discovered (job %d)", image.id, job.id)
    if previous is not None:
        # The earlier version not yet read (still being written, or rewritten before its
        # turn) can never be: its bytes are gone. Closed, pointing here; no alert.
        waiting = session.scalar(select(Job).where(Job.image_id == previous,
                                                   Job.state == "pending"))
        if waiting is not None:
            supersede(session, waiting, image.id, actor, now)
    for gone in session.scalars(  # the same content under an old name that was not found
        select(Job).join(Image, Image.id == Job.image_id).where(
            Image.root_key == root_key, Image.rel_path != rel_path, Image.size == size,
            Image.mtime_ns == mtime_ns, _same_inode(Image.inode, inode), Job.state == "pending",
            Job.error_class == "FileNotFoundError",
        )
    ).all():
        close_moved(session, gone, image.id, actor, now)
    claimed = None if lease is None else _lease(job, image, lease[0], now, lease[1])
    return Discovery(image_id=image.id, job_id=job.id, rel_path=rel_path, claimed=claimed)


def claim(
    session: Session, owner: str, now: datetime, expires: datetime, root_key: str | None
) -> ClaimedJob | None:
    """Lease the oldest runnable pending job (of ``root_key`` if given) to ``owner``."""
    query = (
        select(Job, Image)
        .join(Image, Image.id == Job.image_id)
        .where(Job.state == "pending", (Job.not_before.is_(None)) | (Job.not_before <= now))
        .order_by(Job.id)
        .limit(1)
    )
    if root_key is not None:
        query = query.where(Image.root_key == root_key)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True, of=Job)
    row = session.execute(query).first()
    if row is None:
        return None
    job, image = row
    return _lease(job, image, owner, now, expires)


def _lease(job: Job, image: Image, owner: str, now: datetime, expires: datetime) -> ClaimedJob:
    """``pending`` -> ``processing``, leased to ``owner`` until ``expires``: one attempt."""
    job.state = "processing"
    job.attempts += 1
    job.lease_owner = owner
    job.lease_expires_at = expires
    job.started_at = now
    job.updated_at = now
    return ClaimedJob(
        job_id=job.id,
        image_id=image.id,
        root_key=image.root_key,
        rel_path=image.rel_path,
        size=image.size,
        mtime_ns=image.mtime_ns,
        attempts=job.attempts,
        lease_expires_at=expires,
    )


def expired(session: Session, now: datetime) -> list[Job]:
    """``processing`` jobs whose lease ran out before ``now``."""
    query = select(Job).where(Job.state == "processing", Job.lease_expires_at < now)
    return list(session.scalars(query.order_by(Job.id)).all())


def orphaned(session: Session, owner_prefix: str, alive: Callable[[str], bool] | None) -> list[Job]:
    """``processing`` jobs leased to an owner starting with ``owner_prefix`` that is gone."""
    held = session.scalars(select(Job).where(Job.state == "processing").order_by(Job.id)).all()
    owners = {j.lease_owner for j in held if (j.lease_owner or "").startswith(owner_prefix)}
    gone = {o for o in owners if o is not None and (alive is None or not alive(o))}
    return [j for j in held if j.lease_owner in gone]


def held_job(session: Session, job_id: int, owner: str) -> Job:
    query = select(Job).where(Job.id == job_id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    job = session.scalar(query)
    if job is None:
        raise NotFoundError(f"job {job_id}: no such job")
    if job.state != "processing" or job.lease_owner != owner:
        raise ConflictError(
            f"job {job_id}: not leased to {owner!r} (state {job.state}, "
            f"lease owner {job.lease_owner!r}); its lease expired or it was finished"
        )
    return job


def record_assessment(
    session: Session, job: Job, result: AssessmentRecord, actor: str, now: datetime
) -> FinishOutcome:
    """Image details, prediction, tiles, heatmap, alert if positive, audit, job -> done."""
    image = session.get(Image, job.image_id)
    assert image is not None  # foreign key
    model = session.get(ModelRow, result.model_id)
    if model is None:
        raise NotFoundError(f"model {result.model_id}: not registered")
    _describe_image(image, result)
    prediction = _add_prediction(session, image, model, result, now)
    tiles, heatmap = _add_outputs(session, prediction, result)
    alert = _add_alert(session, image, job, prediction, result, now) if result.decision else None
    alert_id = None if alert is None else alert.id
    # The order of the events is part of the hash chain: the assessment, then its alert.
    event = audit.append_event(
        session,
        "image.assessed",
        image.id,
        _assessed_payload(job, model, prediction, tiles, heatmap, result),
        actor,
        now,
    )
    if alert is not None:
        event = audit.append_event(
            session, "alert.raised", image.id, _alert_payload(alert, prediction), actor, now
        )
    _close_done(session, job, prediction, now)
    logger.info(
        "image %s assessed: prediction %d decision=%s",
        image.id,
        prediction.id,
        result.decision,
    )
    return FinishOutcome(prediction_id=prediction.id, alert_id=alert_id, audit_seq=event.seq)


def _describe_image(image: Image, result: AssessmentRecord) -> None:
    """What reading the file told us about it: its bytes' hash, shape, scale and profile."""
    image.sha256 = result.sha256
    image.shape_json = json.dumps(list(result.shape))
    image.um_per_px = result.um_per_px
    image.um_per_px_source = result.um_per_px_source
    image.profile = result.profile


def _add_prediction(
    session: Session, image: Image, model: ModelRow, result: AssessmentRecord, now: datetime
) -> Prediction:
    """The prediction row, flushed so its id can key the tiles, heatmap and events."""
    prediction = Prediction(
        image_id=image.id,
        model_id=model.id,
        backend=result.backend,
        device=result.device,
        precision=result.precision,
        raw_probability=result.raw_probability,
        probability=result.probability,
        decision=result.decision,
        threshold=result.threshold,
        driving_tile=result.driving_tile,
        timings_json=audit.canonical_json({k: float(v) for k, v in result.timings.items()}),
        created_at=now,
        quality_json=None if result.quality is None else audit.canonical_json(result.quality),
    )
    session.add(prediction)
    session.flush()
    return prediction


def _add_outputs(
    session: Session, prediction: Prediction, result: AssessmentRecord
) -> tuple[list[dict[str, Any]], Heatmap | None]:
    """The prediction's tiles, heatmap and summary (flushed); tiles and heatmap are digested.

    The tiles (16 to hundreds per image) go in as one bulk INSERT ... RETURNING id, not
    as ORM objects: the unit of work cost more than the rest of the transaction. They
    come back as the column values written, ids included, for their digest.
    """
    tiles = [
        {"prediction_id": prediction.id, "idx": i, "x0": t.box[0], "y0": t.box[1],
         "x1": t.box[2], "y1": t.box[3], "probability": t.probability}
        for i, t in enumerate(result.tiles)
    ]
    if tiles:
        inserted = insert(Tile).returning(Tile.id, sort_by_parameter_order=True)
        for row, tile_id in zip(tiles, session.scalars(inserted, tiles), strict=True):
            row["id"] = tile_id
    heatmap = None
    if result.heatmap_png is not None:
        heatmap = Heatmap(
            prediction_id=prediction.id,
            png=result.heatmap_png,
            scale=result.heatmap_scale or 1.0,
        )
        session.add(heatmap)
    if result.summary_kind is not None and result.summary_data is not None:
        session.add(PredictionSummary(prediction_id=prediction.id, kind=result.summary_kind,
                                      data=result.summary_data))
    session.flush()
    return tiles, heatmap


def _add_alert(
    session: Session,
    image: Image,
    job: Job,
    prediction: Prediction,
    result: AssessmentRecord,
    now: datetime,
) -> Alert:
    """The tumour-at-margin alert of a positive decision, flushed so the event can cite it."""
    alert = Alert(
        kind="tumour-at-margin",
        image_id=image.id,
        prediction_id=prediction.id,
        job_id=job.id,
        raised_at=now,
        message=(
            f"tumour at margin: p={result.probability:.3f} >= threshold {result.threshold:.3f}"
        ),
    )
    session.add(alert)
    session.flush()
    return alert


def _assessed_payload(
    job: Job,
    model: ModelRow,
    prediction: Prediction,
    tiles: list[dict[str, Any]],
    heatmap: Heatmap | None,
    result: AssessmentRecord,
) -> dict[str, Any]:
    """The ``image.assessed`` payload: ids, the decision and the digests of the rows written."""
    return {
        "job_id": job.id,
        "prediction_id": prediction.id,
        "model_digest": model.digest,
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


def _alert_payload(alert: Alert, prediction: Prediction) -> dict[str, Any]:
    """The ``alert.raised`` payload of a tumour-at-margin alert, with the alert row's digest."""
    return {
        "alert_id": alert.id,
        "kind": "tumour-at-margin",
        "prediction_id": prediction.id,
        "digests": _digests.alert_digests(alert),
    }


def _close_done(session: Session, job: Job, prediction: Prediction, now: datetime) -> None:
    """``processing`` -> ``done``, pointing at its prediction, any earlier error cleared."""
    end_job(job, "done", now)
    job.prediction_id = prediction.id
    job.error_class = None
    job.error_message = None
    session.flush()


def _quality_summary(quality: Any) -> dict[str, Any] | None:
    """The gate's values and tile counts for the audit trail (thresholds are in the row)."""
    if not quality:
        return None
    return {
        "passed": quality.get("passed"),
        "values": {k: m.get("value") for k, m in quality.get("measurements", {}).items()},
        "tiles": quality.get("tiles"),
    }


def close_duplicate(
    session: Session, job: Job, sha256: str, of_prediction_id: int, actor: str, now: datetime
) -> None:
    """The job's bytes were assessed before by the same model: link, don't rerun."""
    if session.get(Prediction, of_prediction_id) is None:
        raise NotFoundError(f"prediction {of_prediction_id}: no such prediction")
    image = session.get(Image, job.image_id)
    assert image is not None
    image.sha256 = sha256
    end_job(job, "duplicate", now)
    job.prediction_id = of_prediction_id
    audit.append_event(
        session,
        "image.duplicate",
        image.id,
        {"job_id": job.id, "sha256": sha256, "of_prediction_id": of_prediction_id},
        actor,
        now,
    )
