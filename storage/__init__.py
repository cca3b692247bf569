"""marginwatch.storage: results database, durable job queue and the audit trail.

SQLAlchemy 2.0 models, Alembic migrations shipped in this package, an append-only
hash-chained audit log and read-only auditor queries. SQLite by default (a file in
the state directory), PostgreSQL by URL. Imports no torch.

    from marginwatch.storage import Store
    with Store.open(path_or_url, upgrade=True) as store: ...
"""

from __future__ import annotations

from .audit import AuditAnchor
from .records import (
    AlertDetail,
    AlertView,
    AssessmentRecord,
    AuditEventView,
    AuditReport,
    ClaimedJob,
    Counters,
    Discovery,
    FailOutcome,
    FinishOutcome,
    HeartbeatView,
    ImageDetail,
    ImageRow,
    TileRecord,
)
from .store import Store

__all__ = [
    "AlertDetail",
    "AlertView",
    "AssessmentRecord",
    "AuditAnchor",
    "AuditEventView",
    "AuditReport",
    "ClaimedJob",
    "Counters",
    "Discovery",
    "FailOutcome",
    "FinishOutcome",
    "HeartbeatView",
    "ImageDetail",
    "ImageRow",
    "Store",
    "TileRecord",
]
