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

This module holds the opening, the sessions and the audited writes; the ``Store``
inherits its job queue (claim, lease, release, requeue, finish, fail) from
:class:`._store_queue.QueueMethods`, its read-only queries from
:class:`._store_reads.ReadMethods`, its case methods from :class:`._case_store.CaseMethods`
and its monitoring methods from :class:`.truth.MonitoringMethods`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
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
from ._connection import (
    READ_OPTION,
    Target,
    check_sqlite_file,
    make_engine,
    parse_target,
    translate_errors,
)
from ._store_queue import QueueMethods
from ._store_reads import ReadMethods
from ._time import aware_utc as _now
from .models import Alert, AuditEvent, Heartbeat, ModelRow
from .records import AlertView, AuditEventView, Discovery, Placement
from .truth import MonitoringMethods

__all__ = ["CHANGE_CHANNEL", "DEFAULT_BUSY_TIMEOUT_SECONDS", "Store"]

logger = logging.getLogger(__name__)

DEFAULT_BUSY_TIMEOUT_SECONDS = 10.0
#: PostgreSQL: every writing transaction sends ``NOTIFY`` on this channel (delivered at
#: commit) so that the dashboard wakes on change (``marginwatch.daemon._db_waker``)
CHANGE_CHANNEL = "marginwatch_changes"




class Store(QueueMethods, ReadMethods, CaseMethods, MonitoringMethods):
    """An open database. Use :meth:`open`; close it (or use ``with``) when done."""

    def __init__(
        self, engine: Engine, target: Target, *, readonly: bool, busy_timeout_seconds: float
    ) -> None:
        self._engine = engine
        # reads begin deferred: a snapshot beside the writers (_connection.READ_OPTION)
        self._read_engine = engine.execution_options(**{READ_OPTION: True})
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
        with self._translate(), self._read_engine.connect() as connection:
            return schema.current_revision(connection)

    def _refuse_newer(self, current: str | None) -> None:
        if current is not None and current not in schema.known_revisions():
            raise SchemaVersionError(
                f"{self.location}: schema revision {current} is newer than this marginwatch "
                f"(knows up to {schema.head_revision()}); upgrade marginwatch, not the database"
            )

    def _check_schema(self) -> None:
        with self._translate(), self._read_engine.connect() as connection:
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
        with self._healing(), Session(self._read_engine) as session, session.begin():
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
