"""marginwatch.storage: results database, durable job queue and the audit trail.

SQLAlchemy 2.0 models, Alembic migrations shipped in this package, an append-only
hash-chained audit log and read-only auditor queries. SQLite by default (a file in
the state directory), PostgreSQL by URL. Imports no torch.

    from marginwatch.storage import Store
    with Store.open(path_or_url, upgrade=True) as store: ...
"""

from __future__ import annotations

from ._connection import Target, parse_target
from .audit import AuditAnchor
from .records import (
    AlertDetail,
    AlertView,
    AssessmentRecord,
    AuditEventView,
    AuditReport,
    CaseDetail,
    CaseImage,
    CaseView,
    ClaimedJob,
    Counters,
    Discovery,
    FailOutcome,
    FinishOutcome,
    HeartbeatView,
    ImageDetail,
    ImageKey,
    ImageRow,
    LocationStatus,
    MonitorAlarmView,
    MonitorRow,
    Placement,
    TileRecord,
    TruthEntry,
    TruthImport,
)
from .store import Store

__all__ = [
    "AlertDetail",
    "AlertView",
    "AssessmentRecord",
    "AuditAnchor",
    "AuditEventView",
    "AuditReport",
    "CaseDetail",
    "CaseImage",
    "CaseView",
    "ClaimedJob",
    "Counters",
    "Discovery",
    "FailOutcome",
    "FinishOutcome",
    "HeartbeatView",
    "ImageDetail",
    "ImageKey",
    "ImageRow",
    "LocationStatus",
    "MonitorAlarmView",
    "MonitorRow",
    "Placement",
    "Store",
    "Target",
    "TileRecord",
    "TruthEntry",
    "TruthImport",
    "parse_target",
]
