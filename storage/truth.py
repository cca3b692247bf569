"""Ground truth, monitoring reads and monitoring alarms, inside the Store's transactions.

Ground truth is the final histopathology margin status of an image (``tumour`` or
``clear``). An import writes it through :func:`import_truth` in one transaction:

- a new image gets a row and a ``truth.recorded`` audit event;
- a different status is a *correction*: the row is updated, its ``revision`` goes up
  and ``truth.corrected`` records the old and the new status (never a silent overwrite);
- other details (reporter, date, note) changed: ``truth.updated`` with old and new;
- the same values again: nothing is written at all (re-importing a file changes nothing).

A summary event ``truth.imported`` closes an import that changed something.

Alarms (:class:`~marginwatch.storage.models.MonitorAlarm`) are raised and acknowledged
with audit events ``monitor.alarm`` and ``monitor.alarm.acknowledged``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from marginwatch.engine.errors import ConflictError, NotFoundError
from sqlalchemy import select
from sqlalchemy.orm import Session

from . import _digests, audit
from ._time import aware_utc as _aware
from .models import (
    ALARM_KINDS,
    TRUTH_STATUSES,
    Case,
    GroundTruth,
    Image,
    Job,
    MonitorAlarm,
    Prediction,
)
from .models import PredictionSummary as Summary
from .records import ImageKey, MonitorAlarmView, MonitorRow, TruthEntry, TruthImport

__all__ = [
    "acknowledge_alarm",
    "alarm_view",
    "alarms",
    "images_by_case_location",
    "images_by_path",
    "images_by_sha256",
    "import_truth",
    "monitor_rows",
    "raise_alarm",
]

_CHUNK = 500  # keys per IN (...) query


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def images_by_path(session: Session, paths: Iterable[str]) -> dict[str, list[ImageKey]]:
    """Every recorded image (all export roots, all file versions) per relative path."""
    found: dict[str, list[ImageKey]] = {}
    for chunk in _chunks(sorted(set(paths))):
        rows = session.execute(
            select(Image.id, Image.root_key, Image.rel_path).where(Image.rel_path.in_(chunk))
        )
        for image_id, root_key, rel_path in rows:
            found.setdefault(rel_path, []).append(ImageKey(image_id, root_key, rel_path))
    return found


def images_by_sha256(session: Session, digests: Iterable[str]) -> dict[str, list[ImageKey]]:
    """Every recorded image per content SHA-256 (lower-case hex)."""
    found: dict[str, list[ImageKey]] = {}
    for chunk in _chunks(sorted(set(digests))):
        rows = session.execute(
            select(Image.id, Image.root_key, Image.rel_path, Image.sha256).where(
                Image.sha256.in_(chunk)
            )
        )
        for image_id, root_key, rel_path, sha in rows:
            found.setdefault(sha, []).append(ImageKey(image_id, root_key, rel_path))
    return found


def images_by_case_location(
    session: Session, pairs: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], list[ImageKey]]:
    """Every recorded image per (case folder, canonical margin location)."""
    found: dict[tuple[str, str], list[ImageKey]] = {}
    wanted = sorted(set(pairs))
    for folder in sorted({f for f, _ in wanted}):
        locations = [loc for f, loc in wanted if f == folder]
        rows = session.execute(
            select(Image.id, Image.root_key, Image.rel_path, Image.location)
            .join(Case, Case.id == Image.case_id)
            .where(Case.folder == folder, Image.location.in_(locations))
        )
        for image_id, root_key, rel_path, location in rows:
            found.setdefault((folder, location), []).append(
                ImageKey(image_id, root_key, rel_path))
    return found


def _details(row: GroundTruth) -> dict[str, Any]:
    return {
        "reported_by": row.reported_by,
        "report_date": row.report_date.isoformat() if row.report_date else None,
        "note": row.note,
    }


def import_truth(
    session: Session,
    entries: Sequence[TruthEntry],
    *,
    source_sha256: str,
    source_name: str,
    actor: str,
    now: datetime,
) -> TruthImport:
    """Record ``entries`` (already validated and resolved); see the module docstring."""
    counts = {"added": 0, "corrected": 0, "updated": 0, "unchanged": 0}
    corrections: list[tuple[str, str, str, int]] = []
    events: list[tuple[str, str, dict[str, Any]]] = []
    for entry in entries:
        if entry.status not in TRUTH_STATUSES:
            raise ValueError(f"line {entry.line}: status {entry.status!r} not in {TRUTH_STATUSES}")
        for image_id in entry.image_ids:
            row = session.get(GroundTruth, image_id)
            if row is not None and row.status != entry.status:
                corrections.append((image_id, row.status, entry.status, entry.line))
            outcome, event = _apply(session, row, entry, image_id, source_sha256, actor, now)
            counts[outcome] += 1
            if event is not None:
                events.append(event)
    result = TruthImport(counts["added"], counts["corrected"], counts["updated"],
                         counts["unchanged"], tuple(corrections))
    if not result.changed:
        return result
    session.flush()
    for action, image_id, payload in events:
        truth = session.get(GroundTruth, image_id)
        assert truth is not None  # flushed above
        payload = {**payload, "digests": _digests.truth_digests(truth)}  # tamper-evident
        audit.append_event(session, action, image_id, payload, actor, now)
    audit.append_event(
        session,
        "truth.imported",
        source_sha256[:16],
        {"source": source_name, "source_sha256": source_sha256, **counts},
        actor,
        now,
    )
    return result


def _apply(
    session: Session,
    row: GroundTruth | None,
    entry: TruthEntry,
    image_id: str,
    source_sha256: str,
    actor: str,
    now: datetime,
) -> tuple[str, tuple[str, str, dict[str, Any]] | None]:
    """One image's truth from ``entry``: (added | corrected | updated | unchanged, its event).

    A new row starts at revision 1; a changed one keeps its old values in the event and
    moves to the next revision.
    """
    new = {
        "reported_by": entry.reported_by,
        "report_date": entry.report_date.isoformat() if entry.report_date else None,
        "note": entry.note,
    }
    base = {"line": entry.line, "source_sha256": source_sha256}
    if row is None:
        session.add(
            GroundTruth(
                image_id=image_id,
                status=entry.status,
                reported_by=entry.reported_by,
                report_date=entry.report_date,
                note=entry.note,
                source_sha256=source_sha256,
                imported_by=actor,
                imported_at=now,
                revision=1,
            )
        )
        return "added", ("truth.recorded", image_id, {**base, "status": entry.status, **new})
    old = _details(row)
    if row.status == entry.status and old == new:
        return "unchanged", None
    if row.status != entry.status:
        outcome, event = "corrected", ("truth.corrected", image_id, {
            **base, "old_status": row.status, "new_status": entry.status,
            "old": old, "new": new, "revision": row.revision + 1,
        })
    else:
        outcome, event = "updated", ("truth.updated", image_id, {
            **base, "status": row.status, "old": old, "new": new,
            "revision": row.revision + 1,
        })
    row.status = entry.status
    row.reported_by, row.report_date, row.note = (
        entry.reported_by, entry.report_date, entry.note,
    )
    row.source_sha256, row.imported_by, row.imported_at = source_sha256, actor, now
    row.revision += 1
    return outcome, event


def monitor_rows(
    session: Session,
    *,
    since: datetime | None,
    until: datetime | None,
    with_summaries: bool,
    model_id: int | None = None,
    latest: int | None = None,
) -> list[MonitorRow]:
    """Images assessed (job ``done``, own prediction) in [since, until), oldest first.

    Times bound when the prediction was made; ``model_id`` keeps one model's, ``latest``
    only the newest N. Duplicates are left out: their bytes were assessed once already
    and would count twice.
    """
    columns: list[Any] = [Image, Prediction, GroundTruth.status]
    if with_summaries:
        columns += [Summary.kind, Summary.data]
    query = (
        select(*columns)
        .join(Job, Job.image_id == Image.id)
        .join(Prediction, Prediction.id == Job.prediction_id)
        .outerjoin(GroundTruth, GroundTruth.image_id == Image.id)
        .where(Job.state == "done", Prediction.image_id == Image.id)
    )
    if with_summaries:
        query = query.outerjoin(Summary, Summary.prediction_id == Prediction.id)
    if since is not None:
        query = query.where(Prediction.created_at >= since)
    if until is not None:
        query = query.where(Prediction.created_at < until)
    if model_id is not None:
        query = query.where(Prediction.model_id == model_id)
    if latest is not None:
        query = query.order_by(Prediction.created_at.desc(), Prediction.id.desc()).limit(latest)
    else:
        query = query.order_by(Prediction.created_at, Prediction.id)
    rows = list(session.execute(query))
    if latest is not None:
        rows.reverse()
    out = []
    for row in rows:
        image, prediction, status = row[0], row[1], row[2]
        out.append(
            MonitorRow(
                image_id=image.id,
                root_key=image.root_key,
                rel_path=image.rel_path,
                prediction_id=prediction.id,
                model_id=prediction.model_id,
                created_at=prediction.created_at,
                probability=prediction.probability,
                decision=prediction.decision,
                threshold=prediction.threshold,
                truth=status,
                summary_kind=row[3] if with_summaries else None,
                summary_data=row[4] if with_summaries else None,
            )
        )
    return out


def alarm_view(alarm: MonitorAlarm) -> MonitorAlarmView:
    try:
        details = json.loads(alarm.details_json)
    except ValueError:
        details = {}
    return MonitorAlarmView(
        id=alarm.id,
        kind=alarm.kind,
        model_id=alarm.model_id,
        message=alarm.message,
        details=details if isinstance(details, dict) else {},
        raised_at=alarm.raised_at,
        acknowledged_by=alarm.acknowledged_by,
        acknowledged_at=alarm.acknowledged_at,
        ack_note=alarm.ack_note,
    )


def alarms(session: Session, *, open_only: bool) -> list[MonitorAlarmView]:
    query = select(MonitorAlarm).order_by(MonitorAlarm.raised_at.desc(), MonitorAlarm.id.desc())
    if open_only:
        query = query.where(MonitorAlarm.acknowledged_at.is_(None))
    return [alarm_view(a) for a in session.scalars(query)]


def raise_alarm(
    session: Session,
    kind: str,
    model_id: int,
    message: str,
    details: Mapping[str, Any],
    actor: str,
    now: datetime,
) -> MonitorAlarmView:
    if kind not in ALARM_KINDS:
        raise ValueError(f"alarm kind {kind!r} not in {ALARM_KINDS}")
    alarm = MonitorAlarm(
        kind=kind,
        model_id=model_id,
        message=message,
        details_json=audit.canonical_json(dict(details)),
        raised_at=now,
    )
    session.add(alarm)
    session.flush()
    audit.append_event(
        session,
        "monitor.alarm",
        f"alarm-{alarm.id}",
        {"alarm_id": alarm.id, "kind": kind, "model_id": model_id, "message": message,
         "details": dict(details)},
        actor,
        now,
    )
    return alarm_view(alarm)


def acknowledge_alarm(
    session: Session, alarm_id: int, by: str, note: str | None, now: datetime
) -> MonitorAlarmView:
    alarm = session.get(MonitorAlarm, alarm_id)
    if alarm is None:
        raise NotFoundError(f"alarm {alarm_id}: no such monitoring alarm")
    if alarm.acknowledged_at is not None:
        raise ConflictError(
            f"alarm {alarm_id}: already acknowledged by {alarm.acknowledged_by} "
            f"at {alarm.acknowledged_at.isoformat(timespec='seconds')}"
        )
    alarm.acknowledged_by, alarm.acknowledged_at, alarm.ack_note = by, now, note
    audit.append_event(
        session,
        "monitor.alarm.acknowledged",
        f"alarm-{alarm.id}",
        {"alarm_id": alarm.id, "kind": alarm.kind, "note": note},
        by,
        now,
    )
    session.flush()
    return alarm_view(alarm)


class MonitoringMethods:
    """The Store's ground-truth, monitoring and alarm methods (mixed into Store).

    Each is one transaction, like every Store method; kept here so ``store.py`` stays
    about the queue and the audit log.
    """

    def _write(self, *, audited: bool = True) -> Any:  # provided by Store
        raise NotImplementedError

    def _read(self) -> Any:  # provided by Store
        raise NotImplementedError

    def images_for_keys(
        self,
        *,
        paths: Iterable[str] = (),
        sha256s: Iterable[str] = (),
        case_locations: Iterable[tuple[str, str]] = (),
    ) -> tuple[
        dict[str, list[ImageKey]],
        dict[str, list[ImageKey]],
        dict[tuple[str, str], list[ImageKey]],
    ]:
        """Images per relative path, per content SHA-256 and per (case, location)."""
        with self._read() as session:
            return (
                images_by_path(session, paths),
                images_by_sha256(session, sha256s),
                images_by_case_location(session, case_locations),
            )

    def import_truth(
        self,
        entries: Sequence[TruthEntry],
        *,
        source_sha256: str,
        source_name: str,
        actor: str,
        now: datetime | None = None,
    ) -> TruthImport:
        """Record ground truth (audited; corrections keep both values); one transaction."""
        with self._write() as session:
            return import_truth(
                session, entries, source_sha256=source_sha256, source_name=source_name,
                actor=actor, now=_aware(now),
            )

    def monitor_rows(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        with_summaries: bool = False,
        model_id: int | None = None,
        latest: int | None = None,
    ) -> list[MonitorRow]:
        """Assessed images with prediction, truth and (optionally) summary, oldest first."""
        with self._read() as session:
            return monitor_rows(session, since=since, until=until,
                                with_summaries=with_summaries, model_id=model_id,
                                latest=latest)

    def model_cards(self) -> dict[int, tuple[str, dict[str, Any]]]:
        """model id -> (digest, card as recorded)."""
        from .models import ModelRow

        with self._read() as session:
            return {
                row.id: (row.digest, {"architecture": row.architecture,
                                      **json.loads(row.card_json)})
                for row in session.scalars(select(ModelRow))
            }

    def monitor_alarms(self, *, open_only: bool = False) -> list[MonitorAlarmView]:
        """Monitoring alarms, newest first."""
        with self._read() as session:
            return alarms(session, open_only=open_only)

    def open_monitor_alarms(self) -> list[MonitorAlarmView]:
        return self.monitor_alarms(open_only=True)

    def raise_alarm(
        self,
        kind: str,
        model_id: int,
        message: str,
        details: Mapping[str, Any],
        *,
        actor: str = "marginwatch",
        now: datetime | None = None,
    ) -> MonitorAlarmView:
        """Record an alarm (audited ``monitor.alarm``); the dashboard shows it until acked."""
        with self._write() as session:
            return raise_alarm(session, kind, model_id, message, details, actor, _aware(now))

    def acknowledge_alarm(
        self, alarm_id: int, by: str, note: str | None = None, *, now: datetime | None = None
    ) -> MonitorAlarmView:
        if not by.strip():
            raise ConflictError("acknowledge: `by` must name the person acknowledging")
        with self._write() as session:
            return acknowledge_alarm(session, alarm_id, by, note, _aware(now))


