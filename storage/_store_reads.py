"""The Store's read-only queries (a mixin of :class:`~marginwatch.storage.Store`).

Alerts, images, counters and the queue's depth for the dashboard and ``marginwatch
audit``; the audit log, its verification and the heartbeat; the duplicate lookup. Each
method is one read transaction (the Store's ``_read()``); none writes. The query bodies
live in :mod:`._queries`. Kept apart so store.py stays near its size guideline.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from . import _queries, audit
from ._time import aware_utc as _now
from .models import Base
from .records import (
    AlertDetail,
    AlertView,
    AuditEventView,
    AuditReport,
    Counters,
    HeartbeatView,
    ImageDetail,
    ImageRow,
)

__all__ = ["ReadMethods"]

_predictions, _images = Base.metadata.tables["predictions"], Base.metadata.tables["images"]
#: the duplicate lookup, once per image read: built once, run with each image's values
_EARLIER_ASSESSMENT = (
    select(_predictions.c.id)
    .join(_images, _images.c.id == _predictions.c.image_id)
    .where(_images.c.sha256 == bindparam("sha256"),
           _predictions.c.model_id == bindparam("model_id"))
    .order_by(_predictions.c.id)
    .limit(1)
)


class ReadMethods:
    """The read-only queries; needs the Store's ``_read()`` (a read transaction's session)."""

    def _read(self) -> AbstractContextManager[Session]:  # pragma: no cover - the Store's
        raise NotImplementedError

    def find_assessment(self, sha256: str, model_id: int) -> int | None:
        """The id of an earlier prediction of the same bytes by the same model."""
        with self._read() as session:
            return session.connection().execute(
                _EARLIER_ASSESSMENT, {"sha256": sha256, "model_id": model_id}).scalar()

    def verify_audit(
        self, anchor: audit.AuditAnchor | str | os.PathLike[str] | None = None
    ) -> AuditReport:
        """Walk the hash chain; with an anchor (object or file), also check it is in it.

        An anchor *file* that does not exist yet is not checked (``anchor_checked`` False):
        the caller writes one from the report (:meth:`AuditAnchor.write`).
        """
        if anchor is not None and not isinstance(anchor, audit.AuditAnchor):
            anchor = audit.AuditAnchor.read(anchor) if Path(anchor).exists() else None
        with self._read() as session:
            return audit.verify_chain(session, anchor)

    def audit_events(
        self,
        object_id: str | None = None,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> list[AuditEventView]:
        with self._read() as session:
            return _queries.audit_events(session, object_id, since, until, limit)

    def read_heartbeat(self) -> HeartbeatView | None:
        with self._read() as session:
            return _queries.heartbeat(session)


    def open_alerts(self) -> list[AlertView]:
        with self._read() as session:
            return _queries.alerts(session, open_only=True)

    def alerts(self, *, open_only: bool = False, limit: int | None = None) -> list[AlertView]:
        with self._read() as session:
            return _queries.alerts(session, open_only=open_only, limit=limit)

    def latest_alert_detail(self) -> AlertDetail | None:
        """The newest unacknowledged alert with its tiles and heatmap."""
        with self._read() as session:
            return _queries.latest_alert_detail(session)

    def recent_results(self, limit: int = 10) -> list[ImageRow]:
        with self._read() as session:
            return _queries.image_rows(session, limit=limit)

    def counters(self, since: datetime) -> Counters:
        with self._read() as session:
            return _queries.counters(session, _now(since))

    def queue_depth(self) -> int:
        """Jobs not finished yet: pending (including retries waiting) plus processing."""
        with self._read() as session:
            return _queries.queue_depth(session)

    def list_images(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        decision: bool | None = None,
        kind: str | None = None,
        state: str | None = None,
        limit: int | None = None,
        newest_first: bool = True,
    ) -> list[ImageRow]:
        """One row per image with its final state (``marginwatch audit list``).

        ``since``/``until`` bound when the image was first seen; ``decision`` filters on the
        prediction, ``kind`` on any alert of that kind, ``state`` on the job state.
        """
        with self._read() as session:
            return _queries.image_rows(
                session,
                since=since,
                until=until,
                decision=decision,
                kind=kind,
                state=state,
                limit=limit,
                newest_first=newest_first,
            )

    def image_detail(self, image_id: str) -> ImageDetail:
        """Everything about one image; ``image_id`` may be a unique prefix (>= 4 chars)."""
        with self._read() as session:
            return _queries.image_detail(session, image_id)
