"""Read queries behind the Store's dashboard and auditor methods (one session each)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from marginwatch.engine.errors import ConflictError, NotFoundError
from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from . import audit
from .models import Alert, AuditEvent, Heartbeat, Heatmap, Image, Job, ModelRow, Prediction, Tile
from .records import (
    AlertDetail,
    AlertView,
    AuditEventView,
    Counters,
    HeartbeatView,
    ImageDetail,
    ImageRow,
    TileRecord,
)


def _loads(text: str | None, default: Any) -> Any:
    if not text:
        return default
    try:
        return json.loads(text)
    except ValueError:
        return default


def alert_view(
    session: Session,
    alert: Alert,
    rel_path: str | None = None,
    probability: float | None = None,
    location: str | None = None,
) -> AlertView:
    if rel_path is None:
        row = session.execute(
            select(Image.rel_path, Image.location).where(Image.id == alert.image_id)
        ).first()
        rel_path, location = (row[0], row[1]) if row is not None else ("", None)
    if probability is None and alert.prediction_id is not None:
        probability = session.scalar(
            select(Prediction.probability).where(Prediction.id == alert.prediction_id)
        )
    return AlertView(
        id=alert.id,
        kind=alert.kind,
        image_id=alert.image_id,
        rel_path=rel_path,
        prediction_id=alert.prediction_id,
        job_id=alert.job_id,
        probability=probability,
        message=alert.message,
        raised_at=alert.raised_at,
        acknowledged_by=alert.acknowledged_by,
        acknowledged_at=alert.acknowledged_at,
        ack_note=alert.ack_note,
        location=location,
    )


def alerts(
    session: Session, *, open_only: bool, limit: int | None = None, image_id: str | None = None
) -> list[AlertView]:
    query = (
        select(Alert, Image.rel_path, Prediction.probability, Image.location)
        .join(Image, Image.id == Alert.image_id)
        .outerjoin(Prediction, Prediction.id == Alert.prediction_id)
        .order_by(Alert.raised_at.desc(), Alert.id.desc())
    )
    if open_only:
        query = query.where(Alert.acknowledged_at.is_(None))
    if image_id is not None:
        query = query.where(Alert.image_id == image_id)
    if limit is not None:
        query = query.limit(limit)
    return [alert_view(session, a, path, p, loc) for a, path, p, loc in session.execute(query)]


def _tiles(session: Session, prediction_id: int) -> tuple[TileRecord, ...]:
    rows = session.scalars(
        select(Tile).where(Tile.prediction_id == prediction_id).order_by(Tile.idx)
    )
    return tuple(TileRecord((t.x0, t.y0, t.x1, t.y1), t.probability) for t in rows)


def latest_alert_detail(session: Session) -> AlertDetail | None:
    found = alerts(session, open_only=True, limit=1)
    if not found:
        return None
    alert = found[0]
    prediction = heatmap = None
    if alert.prediction_id is not None:
        prediction = session.get(Prediction, alert.prediction_id)
        heatmap = session.get(Heatmap, alert.prediction_id)
    return AlertDetail(
        alert=alert,
        decision=None if prediction is None else prediction.decision,
        threshold=None if prediction is None else prediction.threshold,
        backend=None if prediction is None else prediction.backend,
        tiles=() if prediction is None else _tiles(session, prediction.id),
        driving_tile=None if prediction is None else prediction.driving_tile,
        heatmap_png=None if heatmap is None else heatmap.png,
        heatmap_scale=None if heatmap is None else heatmap.scale,
    )


def _latest_alerts(session: Session, image_ids: list[str]) -> dict[str, Alert]:
    latest: dict[str, Alert] = {}
    for start in range(0, len(image_ids), 500):
        chunk = image_ids[start : start + 500]
        for alert in session.scalars(
            select(Alert).where(Alert.image_id.in_(chunk)).order_by(Alert.id)
        ):
            latest[alert.image_id] = alert
    return latest


def image_rows(
    session: Session,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    decision: bool | None = None,
    kind: str | None = None,
    state: str | None = None,
    limit: int | None = None,
    image_id: str | None = None,
    newest_first: bool = True,
) -> list[ImageRow]:
    query = (
        select(Image, Job, Prediction, ModelRow.digest)
        .join(Job, Job.image_id == Image.id)
        .outerjoin(Prediction, Prediction.id == Job.prediction_id)
        .outerjoin(ModelRow, ModelRow.id == Prediction.model_id)
    )
    if since is not None:
        query = query.where(Image.first_seen >= since)
    if until is not None:
        query = query.where(Image.first_seen < until)
    if decision is not None:
        query = query.where(Prediction.decision.is_(decision))
    if state is not None:
        query = query.where(Job.state == state)
    if kind is not None:
        query = query.where(Image.id.in_(select(Alert.image_id).where(Alert.kind == kind)))
    if image_id is not None:
        query = query.where(Image.id == image_id)
    if newest_first:
        query = query.order_by(
            func.coalesce(Job.finished_at, Image.first_seen).desc(), Job.id.desc()
        )
    else:
        query = query.order_by(Image.first_seen, Job.id)
    if limit is not None:
        query = query.limit(limit)
    rows = session.execute(query).all()
    latest = _latest_alerts(session, [image.id for image, *_ in rows])
    out = []
    for image, job, prediction, digest in rows:
        alert = latest.get(image.id)
        out.append(
            ImageRow(
                image_id=image.id,
                rel_path=image.rel_path,
                first_seen=image.first_seen,
                state=job.state,
                attempts=job.attempts,
                sha256=image.sha256,
                prediction_id=None if prediction is None else prediction.id,
                probability=None if prediction is None else prediction.probability,
                decision=None if prediction is None else prediction.decision,
                threshold=None if prediction is None else prediction.threshold,
                backend=None if prediction is None else prediction.backend,
                model_digest=digest,
                alert_kind=None if alert is None else alert.kind,
                acknowledged_by=None if alert is None else alert.acknowledged_by,
                error_class=job.error_class,
                error_message=job.error_message,
                finished_at=job.finished_at,
                previous_image_id=image.previous_id,
            )
        )
    return out


def resolve_image_id(session: Session, image_id: str) -> str:
    image_id = image_id.strip().lower()
    if session.get(Image, image_id) is not None:
        return image_id
    if len(image_id) < 4:
        raise NotFoundError(f"image {image_id!r}: no such image (give at least 4 characters)")
    matches = session.scalars(select(Image.id).where(Image.id.like(f"{image_id}%")).limit(2)).all()
    if not matches:
        raise NotFoundError(f"image {image_id!r}: no such image")
    if len(matches) > 1:
        raise ConflictError(f"image {image_id!r}: prefix matches several images; give more")
    return matches[0]


def image_detail(session: Session, image_id: str) -> ImageDetail:
    image_id = resolve_image_id(session, image_id)
    (row,) = image_rows(session, image_id=image_id)
    image = session.get(Image, image_id)
    assert image is not None
    prediction = model = heatmap = None
    if row.prediction_id is not None:
        prediction = session.get(Prediction, row.prediction_id)
        heatmap = session.get(Heatmap, row.prediction_id)
        model = None if prediction is None else session.get(ModelRow, prediction.model_id)
    shape = _loads(image.shape_json, None)
    events = tuple(audit_events(session, image_id, None, None, None))
    quality = None if prediction is None else _loads(prediction.quality_json, None)
    if quality is None and row.state == "failed":  # stopped by the gate: its measurements
        quality = next((e.payload["quality"] for e in reversed(events)
                        if e.action == "image.failed" and "quality" in e.payload), None)
    return ImageDetail(
        row=row,
        root_key=image.root_key,
        size=image.size,
        mtime_ns=image.mtime_ns,
        shape=None if shape is None else tuple(shape),
        um_per_px=image.um_per_px,
        um_per_px_source=image.um_per_px_source,
        profile=image.profile,
        model_architecture=None if model is None else model.architecture,
        device=None if prediction is None else prediction.device,
        precision=None if prediction is None else prediction.precision,
        raw_probability=None if prediction is None else prediction.raw_probability,
        timings=_loads(None if prediction is None else prediction.timings_json, {}),
        tiles=() if prediction is None else _tiles(session, prediction.id),
        driving_tile=None if prediction is None else prediction.driving_tile,
        heatmap_png=None if heatmap is None else heatmap.png,
        heatmap_scale=None if heatmap is None else heatmap.scale,
        alerts=tuple(reversed(alerts(session, open_only=False, image_id=image_id))),
        events=events,
        quality=quality,
    )


def audit_events(
    session: Session,
    object_id: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int | None,
) -> list[AuditEventView]:
    query = select(AuditEvent).order_by(AuditEvent.seq)
    if object_id is not None:
        query = query.where(AuditEvent.object_id == object_id)
    if since is not None:
        query = query.where(AuditEvent.ts >= since)
    if until is not None:
        query = query.where(AuditEvent.ts < until)
    if limit is not None:
        query = query.limit(limit)
    return [audit.to_view(event) for event in session.scalars(query)]


def counters(session: Session, since: datetime) -> Counters:
    by_state = dict(
        session.execute(
            select(Job.state, func.count())
            .join(Image, Image.id == Job.image_id)
            .where(Image.first_seen >= since)
            .group_by(Job.state)
        ).all()
    )
    live = dict(
        session.execute(
            select(Job.state, func.count())
            .where(Job.state.in_(("pending", "processing")))
            .group_by(Job.state)
        ).all()
    )
    positive = session.scalar(
        select(func.count())
        .select_from(Job)
        .join(Image, Image.id == Job.image_id)
        .join(Prediction, Prediction.id == Job.prediction_id)
        .where(Image.first_seen >= since, Job.state == "done", Prediction.decision.is_(True))
    )
    open_alerts = session.scalar(
        select(func.count()).select_from(Alert).where(Alert.acknowledged_at.is_(None))
    )
    return Counters(
        since=since,
        discovered=sum(by_state.values()),
        assessed=by_state.get("done", 0),
        positive=positive or 0,
        duplicate=by_state.get("duplicate", 0),
        failed=by_state.get("failed", 0),
        pending=live.get("pending", 0),
        processing=live.get("processing", 0),
        open_alerts=open_alerts or 0,
    )


def queue_depth(session: Session) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(Job)
            .where(or_(Job.state == "pending", and_(Job.state == "processing")))
        )
        or 0
    )


def heartbeat(session: Session) -> HeartbeatView | None:
    row = session.get(Heartbeat, 1)
    if row is None:
        return None
    return HeartbeatView(
        owner=row.owner,
        status=row.status,
        details=_loads(row.details_json, {}),
        started_at=row.started_at,
        beat_at=row.beat_at,
    )
