"""The Store: the one door to the database for the daemon, dashboard and auditors.

Every public method is one transaction and returns plain dataclasses
(:mod:`marginwatch.storage.records`). Writers on SQLite begin with ``BEGIN IMMEDIATE``;
on PostgreSQL job claiming uses ``FOR UPDATE SKIP LOCKED`` and every audited write first
takes the audit chain's advisory lock (one lock order everywhere: chain, then rows).

    with Store.open("/var/lib/marginwatch/marginwatch.db", upgrade=True) as store:
        model_id = store.register_model(digest, "resnet18", card)
        found = store.record_discovery("export", "case1/a.tif", size, mtime_ns, actor)
        job = store.claim_job("host:1234", lease_seconds=120)
        store.finish_job(job.job_id, "host:1234", AssessmentRecord(...))

This module holds the opening, the sessions, the queue and the audited writes; the
``Store`` inherits its read-only queries from :class:`._store_reads.ReadMethods`, its case
methods from :class:`._case_store.CaseMethods` and its monitoring methods from
:class:`.truth.MonitoringMethods`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

from marginwatch.engine.errors import (
    ConflictError,
    DatabaseUnavailableError,
    NotFoundError,
    SchemaVersionError,
)
from sqlalchemy import Engine, inspect, select, text
from sqlalchemy.orm import Session

from . import _digests, _jobs, _queries, audit, schema
from ._case_store import CaseMethods
from ._connection import Target, check_sqlite_file, make_engine, parse_target, translate_errors
from ._store_reads import ReadMethods
from .models import Alert, AuditEvent, Heartbeat, ModelRow
from .records import (
    AlertView,
    AssessmentRecord,
    AuditEventView,
    ClaimedJob,
    Discovery,
    FailOutcome,
    FinishOutcome,
    Placement,
)
from .truth import MonitoringMethods

__all__ = ["CHANGE_CHANNEL", "DEFAULT_BUSY_TIMEOUT_SECONDS", "Store"]

logger = logging.getLogger(__name__)

DEFAULT_BUSY_TIMEOUT_SECONDS = 10.0
#: PostgreSQL: every writing transaction sends ``NOTIFY`` on this channel (delivered at
#: commit) so that the dashboard wakes on change (``marginwatch.daemon._db_waker``)
CHANGE_CHANNEL = "marginwatch_changes"


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError(f"now={now!r} is naive; pass a timezone-aware UTC datetime")
    return now


class Store(ReadMethods, CaseMethods, MonitoringMethods):
    """An open database. Use :meth:`open`; close it (or use ``with``) when done."""

    def __init__(
        self, engine: Engine, target: Target, *, readonly: bool, busy_timeout_seconds: float
    ) -> None:
        self._engine = engine
        self._target = target
        self.readonly = readonly
        self._busy = busy_timeout_seconds
        self._anchor: audit.AnchorKeeper | None = None

    # --- opening ------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        url_or_path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        upgrade: bool = False,
        busy_timeout_seconds: float = DEFAULT_BUSY_TIMEOUT_SECONDS,
    ) -> Store:
        """Open a database by URL or SQLite file path and check its schema version.

        ``upgrade=True`` creates or migrates the schema to this code's head (a missing
        SQLite file is created). Otherwise the schema must already be at head:
        :class:`SchemaVersionError` says what to run. ``readonly=True`` (auditors) never
        writes, never creates, and is refused ``upgrade``.
        """
        if readonly and upgrade:
            raise ValueError("a read-only store cannot upgrade the schema")
        target = parse_target(os.fspath(url_or_path))
        if target.sqlite_path is not None:
            check_sqlite_file(target.sqlite_path, readonly=readonly, create=upgrade)
        engine = make_engine(target, readonly=readonly, busy_timeout_seconds=busy_timeout_seconds)
        store = cls(engine, target, readonly=readonly, busy_timeout_seconds=busy_timeout_seconds)
        try:
            if upgrade:
                store.upgrade()
            else:
                store._check_schema()
        except BaseException:
            engine.dispose()
            raise
        return store

    @classmethod
    def schema_status(
        cls,
        url_or_path: str | os.PathLike[str],
        *,
        busy_timeout_seconds: float = DEFAULT_BUSY_TIMEOUT_SECONDS,
    ) -> tuple[str | None, str]:
        """(current revision or None, this code's head), opened read-only, unchecked."""
        target = parse_target(os.fspath(url_or_path))
        if target.sqlite_path is not None:
            check_sqlite_file(target.sqlite_path, readonly=True, create=False)
        engine = make_engine(target, readonly=True, busy_timeout_seconds=busy_timeout_seconds)
        store = cls(engine, target, readonly=True, busy_timeout_seconds=busy_timeout_seconds)
        try:
            return store.current_revision(), schema.head_revision()
        finally:
            engine.dispose()

    @property
    def location(self) -> str:
        """The file path or the URL without its password (for messages)."""
        return self._target.display

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    def upgrade(self) -> str:
        """Migrate the schema to this code's head; returns the head revision."""
        if self.readonly:
            raise DatabaseUnavailableError(f"{self.location}: opened read-only; cannot upgrade")
        with self._translate(), schema.migrating(self._engine) as connection:
            current = schema.current_revision(connection)
            self._refuse_newer(current)
            if current != schema.head_revision():
                logger.info(
                    "migrating database schema from %s to %s", current, schema.head_revision()
                )
                schema.upgrade(connection, "head")
        return schema.head_revision()

    def current_revision(self) -> str | None:
        with self._translate(), self._engine.connect() as connection:
            return schema.current_revision(connection)

    def _refuse_newer(self, current: str | None) -> None:
        if current is not None and current not in schema.known_revisions():
            raise SchemaVersionError(
                f"{self.location}: schema revision {current} is newer than this marginwatch "
                f"(knows up to {schema.head_revision()}); upgrade marginwatch, not the database"
            )

    def _check_schema(self) -> None:
        with self._translate(), self._engine.connect() as connection:
            current = schema.current_revision(connection)
            if current is None and not inspect(connection).get_table_names():
                raise SchemaVersionError(
                    f"{self.location}: no marginwatch schema in this database; "
                    "run `marginwatch db upgrade` first"
                )
            if current is None:
                raise DatabaseUnavailableError(
                    f"{self.location}: has tables but no marginwatch schema version; "
                    "not a marginwatch database"
                )
        self._refuse_newer(current)
        if current != schema.head_revision():
            raise SchemaVersionError(
                f"{self.location}: schema revision {current} is older than this code's "
                f"{schema.head_revision()}; run `marginwatch db upgrade`"
            )

    def close(self) -> None:
        if self._anchor is not None:
            self._anchor.flush()
        self._engine.dispose()

    # --- the anchor -----------------------------------------------------------------

    def default_anchor_path(self, state_dir: str | os.PathLike[str]) -> Path:
        """Where the anchor is kept unless configured: beside the SQLite file, else in
        ``state_dir``."""
        if self._target.sqlite_path is not None:
            path = self._target.sqlite_path
            return path.with_name(path.name + ".anchor.json")
        return Path(state_dir) / "audit-anchor.json"

    def keep_anchor(self, path: str | os.PathLike[str], every_events: int) -> None:
        """Keep the chain head in ``path`` from now on (every ``every_events``, and at close).

        Refuses (:class:`AuditChainError`) when an anchor already there is no longer in
        the chain: the log was truncated or rewritten, and that file is the evidence.
        """
        keeper = audit.AnchorKeeper(path, every_events)
        with self._read() as session:
            keeper.check_start(session)
            head = session.execute(
                select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
            ).first()
        self._anchor = keeper
        if head is not None:
            keeper.advance(head.seq, head.hash)

    def flush_anchor(self) -> None:
        if self._anchor is not None:
            self._anchor.flush()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "readonly" if self.readonly else "read-write"
        return f"Store({self.location!r}, {mode})"

    # --- sessions -----------------------------------------------------------------

    def _translate(self) -> Any:
        return translate_errors(
            self._target, readonly=self.readonly, busy_timeout_seconds=self._busy
        )

    @contextmanager
    def _healing(self) -> Iterator[None]:
        """Translate driver errors; after a fault with the database itself (read-only,
        full, I/O, server restart, locked), drop the pooled connections so that the next
        call connects afresh, read-write, once the fault has cleared."""
        try:
            with self._translate():
                yield
        except DatabaseUnavailableError:
            self._engine.dispose()
            raise

    @contextmanager
    def _write(self, *, audited: bool = True) -> Iterator[Session]:
        if self.readonly:
            raise DatabaseUnavailableError(
                f"{self.location}: opened read-only (auditor mode); refusing to write"
            )
        with self._healing(), Session(self._engine, expire_on_commit=False) as session:
            with session.begin():
                if audited:
                    audit.lock_chain(session)
                if self.dialect == "postgresql":
                    session.execute(text(f"NOTIFY {CHANGE_CHANNEL}"))
                yield session
            head = session.info.get("audit_head")  # committed: the anchor may advance
            if head is not None and self._anchor is not None:
                self._anchor.advance(*head)

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._healing(), Session(self._engine) as session, session.begin():
            yield session

    # --- models and discovery -------------------------------------------------------

    def register_model(
        self, digest: str, architecture: str, card: Mapping[str, Any], *, actor: str = "marginwatch"
    ) -> int:
        """The id of the model with this artefact digest; recorded (and audited) once."""
        with self._write() as session:
            existing = session.scalar(select(ModelRow.id).where(ModelRow.digest == digest))
            if existing is not None:
                return existing
            now = datetime.now(UTC)
            row = ModelRow(
                digest=digest,
                architecture=architecture,
                card_json=audit.canonical_json(dict(card)),
                first_seen=now,
            )
            session.add(row)
            session.flush()
            audit.append_event(
                session,
                "model.registered",
                row.id,
                {
                    "digest": digest,
                    "architecture": architecture,
                    "synthetic_demo": bool(card.get("synthetic_demo", False)),
                },
                actor,
                now,
            )
            return row.id

    def record_discovery(
        self,
        root_key: str,
        rel_path: str,
        size: int,
        mtime_ns: int,
        actor: str,
        *,
        now: datetime | None = None,
        placement: Placement | None = None,
        inode: int | None = None,
        lease_to: str | None = None,
        lease_seconds: float = 60.0,
    ) -> Discovery | None:
        """Record a new file version and its pending job; None if already recorded.

        ``placement`` (case folder and margin location) puts the image in its case;
        ``inode`` (the file's st_ino) tells a renamed file from a copy. ``lease_to``
        leases the new job to that owner in the same transaction (``Discovery.claimed``),
        saving the separate claim's commit for a file that is ready now.
        """
        now = _now(now)
        lease = None if lease_to is None else (lease_to, now + timedelta(seconds=lease_seconds))
        with self._write() as session:
            return _jobs.discover(
                session, root_key, rel_path, size, mtime_ns, actor, now, placement=placement,
                inode=inode, lease=lease,
            )

    # --- the queue -----------------------------------------------------------------

    def claim_job(
        self,
        owner: str,
        lease_seconds: float,
        now: datetime | None = None,
        *,
        root_key: str | None = None,
    ) -> ClaimedJob | None:
        """Lease the oldest runnable pending job to ``owner``; None when there is none.

        ``root_key`` restricts the claim to one export root (several daemons, one database).
        """
        now = _now(now)
        expires = now + timedelta(seconds=lease_seconds)
        with self._write(audited=False) as session:
            return _jobs.claim(session, owner, now, expires, root_key)

    def extend_lease(
        self, job_id: int, owner: str, lease_seconds: float, now: datetime | None = None
    ) -> datetime:
        """Push a held lease forward (long jobs); ConflictError if the lease was lost."""
        now = _now(now)
        with self._write(audited=False) as session:
            job = _jobs.held_job(session, job_id, owner)
            job.lease_expires_at = now + timedelta(seconds=lease_seconds)
            job.updated_at = now
            return job.lease_expires_at

    def requeue_expired(
        self,
        now: datetime | None = None,
        *,
        max_attempts: int | None = None,
        actor: str = "marginwatch",
    ) -> int:
        """Put jobs whose lease expired back to pending; returns how many.

        With ``max_attempts``, a job that has already been claimed that many times (a
        file that kills its worker) is failed instead, with a not-assessed alert.
        """
        now = _now(now)
        with self._write() as session:
            jobs = _jobs.expired(session, now)
            for job in jobs:
                _jobs.requeue_lost(session, job, None, max_attempts, actor, now)
            return len(jobs)

    def release_job(
        self, job_id: int, owner: str, *, actor: str | None = None, now: datetime | None = None
    ) -> None:
        """Give a held job back to ``pending`` now: the claim does not count as an attempt.

        For work the daemon itself interrupts (SIGTERM before the assessment finished):
        it is not the file's fault, so no error is recorded, no delay is set and the
        attempt is not counted against ``max_attempts``. Audited ``job.released``.
        ConflictError if the lease was lost, NotFoundError for an unknown job.
        """
        now = _now(now)
        with self._write() as session:
            job = _jobs.held_job(session, job_id, owner)
            _jobs.put_back(job, now)
            job.attempts = max(0, job.attempts - 1)
            audit.append_event(
                session,
                "job.released",
                job.image_id,
                {"job_id": job.id, "attempts": job.attempts, "lease_owner": owner},
                actor or owner,
                now,
            )

    def wait_for_change(
        self,
        job_id: int,
        owner: str,
        retry_after_seconds: float,
        *,
        actor: str | None = None,
        now: datetime | None = None,
    ) -> str:
        """A held job whose file is still changing (size or mtime moved since it was
        recorded): not an attempt, no error, no alert. Returns ``"superseded"`` when a
        newer version of the file is recorded already (the job is closed, pointing to
        it), else ``"pending"`` (runnable again after ``retry_after_seconds``; the newer
        version supersedes it once the readiness tracker records it). Audited.
        ConflictError if the lease was lost, NotFoundError for an unknown job.
        """
        now = _now(now)
        with self._write() as session:
            job = _jobs.held_job(session, job_id, owner)
            return _jobs.wait_for_change(session, job, retry_after_seconds, actor or owner, now)

    def follow_move(
        self, job_id: int, owner: str, *, actor: str | None = None,
        now: datetime | None = None,
    ) -> str | None:
        """A held job whose file is not found under its name: if the same content (root,
        size, mtime) is recorded under another name, close the job as ``moved`` with a
        pointer to that image (audited, no alert) and return its id; else None and the
        job is left as it is (the caller fails or retries it).
        """
        now = _now(now)
        with self._write() as session:
            job = _jobs.held_job(session, job_id, owner)
            target = _jobs.moved_to(session, job)
            if target is not None:
                _jobs.close_moved(session, job, target, actor or owner, now)
            return target

    def requeue_orphans(
        self,
        owner_prefix: str,
        alive: Callable[[str], bool] | None = None,
        now: datetime | None = None,
        *,
        max_attempts: int | None = None,
        actor: str = "marginwatch",
    ) -> int:
        """Put back jobs leased to owners that no longer exist, without waiting for the lease.

        Candidates are ``processing`` jobs whose lease owner starts with ``owner_prefix``
        (the daemon passes its own ``marginwatch-daemon@<host>:``); ``alive(owner)`` says
        whether that owner still runs (None: none of them does). Like
        :meth:`requeue_expired` the claim still counts (the file may be what killed the
        worker), and with ``max_attempts`` a job claimed that many times fails for good.
        Audited ``job.requeued`` with ``reason: "owner-gone"``; returns how many.
        """
        now = _now(now)
        with self._write() as session:
            jobs = _jobs.orphaned(session, owner_prefix, alive)
            for job in jobs:
                _jobs.requeue_lost(session, job, "owner-gone", max_attempts, actor, now)
            return len(jobs)

    def finish_job(
        self,
        job_id: int,
        owner: str,
        result: AssessmentRecord,
        *,
        actor: str | None = None,
        now: datetime | None = None,
    ) -> FinishOutcome:
        """Record an assessment and close the job, all in ONE transaction.

        Image details, prediction, tiles, heatmap, the alert when positive, the audit
        events and ``done``: a crash anywhere leaves all of it or none of it.
        """
        now = _now(now)
        actor = actor or owner
        with self._write() as session:
            job = _jobs.held_job(session, job_id, owner)
            return _jobs.record_assessment(session, job, result, actor, now)

    def mark_duplicate(
        self,
        job_id: int,
        owner: str,
        sha256: str,
        of_prediction_id: int,
        *,
        actor: str | None = None,
        now: datetime | None = None,
    ) -> None:
        """Close a job whose bytes were already assessed by the same model: link, don't rerun."""
        now = _now(now)
        with self._write() as session:
            job = _jobs.held_job(session, job_id, owner)
            _jobs.close_duplicate(session, job, sha256, of_prediction_id, actor or owner, now)

    def fail_job(
        self,
        job_id: int,
        owner: str,
        error_class: str,
        message: str,
        retry_after_seconds: float | None,
        max_attempts: int,
        *,
        quality: Mapping[str, Any] | None = None,
        actor: str | None = None,
        now: datetime | None = None,
    ) -> FailOutcome:
        """Retry later (pending + not_before) or fail for good with a not-assessed alert.

        ``quality``: the gate's report of an image it stopped; it goes into the
        ``image.failed`` audit event, in the hash chain with the reason.
        """
        now = _now(now)
        actor = actor or owner
        with self._write() as session:
            job = _jobs.held_job(session, job_id, owner)
            return _jobs.fail_or_retry(
                session, job, error_class, message, retry_after_seconds, max_attempts, actor, now,
                quality=quality,
            )

    # --- alerts, audit, heartbeat ---------------------------------------------------

    def acknowledge(
        self, alert_id: int, by: str, note: str | None = None, *, now: datetime | None = None
    ) -> AlertView:
        """Record who acknowledged an alert (once); audited with ``by`` as actor."""
        if not by.strip():
            raise ConflictError("acknowledge: `by` must name the person acknowledging")
        now = _now(now)
        with self._write() as session:
            alert = session.get(Alert, alert_id)
            if alert is None:
                raise NotFoundError(f"alert {alert_id}: no such alert")
            if alert.acknowledged_at is not None:
                raise ConflictError(
                    f"alert {alert_id}: already acknowledged by {alert.acknowledged_by} "
                    f"at {alert.acknowledged_at.isoformat(timespec='seconds')}"
                )
            alert.acknowledged_by = by
            alert.acknowledged_at = now
            alert.ack_note = note
            session.flush()
            audit.append_event(
                session,
                "alert.acknowledged",
                alert.image_id,
                {"alert_id": alert.id, "kind": alert.kind, "note": note,
                 "digests": _digests.alert_digests(alert)},
                by,
                now,
            )
            return _queries.alert_view(session, alert)

    def audit(
        self,
        action: str,
        object_id: str | int,
        payload: Mapping[str, Any],
        actor: str,
        *,
        now: datetime | None = None,
    ) -> AuditEventView:
        """Append one event (configuration loaded, daemon start/stop, ...)."""
        with self._write() as session:
            return audit.to_view(
                audit.append_event(session, action, object_id, payload, actor, _now(now))
            )

    def heartbeat(
        self,
        owner: str,
        status: str = "running",
        *,
        details: Mapping[str, Any] | None = None,
        now: datetime | None = None,
    ) -> None:
        """Refresh the single heartbeat row (``started_at`` resets when the owner changes)."""
        now = _now(now)
        with self._write(audited=False) as session:
            row = session.get(Heartbeat, 1)
            body = audit.canonical_json(dict(details or {}))
            if row is None:
                session.add(
                    Heartbeat(
                        id=1,
                        owner=owner,
                        status=status,
                        details_json=body,
                        started_at=now,
                        beat_at=now,
                    )
                )
                return
            if row.owner != owner:
                row.started_at = now
            row.owner, row.status, row.details_json, row.beat_at = owner, status, body, now
