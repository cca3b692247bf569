"""The database schema as SQLAlchemy 2.0 typed models.

These classes are the schema's single source of truth: the Alembic migrations in
``migrations/versions`` must produce exactly this metadata (a test compares them with
``alembic.autogenerate.compare_metadata``). Callers outside storage never see these
objects: :class:`~marginwatch.storage.Store` returns plain dataclasses.

Times are stored in UTC (``UTCDateTime``). Paths are stored once, here, relative to the
export root: the database is the access-controlled place for names that can identify a
patient; logs carry image ids only. A path keeps its exact bytes whatever they are
(``FsPath``: non-UTF-8 names in a reversible escaped form, see ``_paths.py``).
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, validates
from sqlalchemy.types import TypeDecorator

from ._paths import FsPath, path_key

__all__ = [
    "ALARM_KINDS",
    "ALERT_KINDS",
    "CASE_STATES",
    "JOB_STATES",
    "TRUTH_STATUSES",
    "Alert",
    "AuditEvent",
    "Base",
    "Case",
    "GroundTruth",
    "Heartbeat",
    "Heatmap",
    "Image",
    "Job",
    "ModelRow",
    "MonitorAlarm",
    "Prediction",
    "PredictionSummary",
    "Tile",
    "UTCDateTime",
]

JOB_STATES = ("pending", "processing", "done", "duplicate", "failed", "superseded", "moved")
CASE_STATES = ("open", "closed")
ALERT_KINDS = ("tumour-at-margin", "not-assessed")
#: Histopathology margin status: tumour at the margin / no tumour at the margin.
TRUTH_STATUSES = ("tumour", "clear")
#: Monitoring alarms (see docs/monitoring.md).
ALARM_KINDS = ("sensitivity", "calibration", "input-drift")

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: storage expects timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ModelRow(Base):
    """A model artefact, identified by the SHA-256 of its weights + card."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    architecture: Mapped[str] = mapped_column(String(100))
    card_json: Mapped[str] = mapped_column(Text)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)


class Case(Base):
    """A specimen: the first folder under an export root. ``folder`` may identify a patient.

    Open until closed by a person (``close_reason`` "closed", audited), or after it was
    idle for the configured time ("idle"); a late image reopens it (``reopened`` counts).
    """

    __tablename__ = "cases"
    __table_args__ = (
        UniqueConstraint("root_key", "folder"),
        CheckConstraint("state IN ('open', 'closed')", name="state"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    root_key: Mapped[str] = mapped_column(String(200))
    folder: Mapped[str] = mapped_column(FsPath(1000))  # lossless, as images.rel_path
    state: Mapped[str] = mapped_column(String(10))
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_image_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_by: Mapped[str | None] = mapped_column(String(200))
    close_reason: Mapped[str | None] = mapped_column(String(20))
    close_note: Mapped[str | None] = mapped_column(Text)
    reopened: Mapped[int] = mapped_column(Integer, default=0)


class Image(Base):
    """One file version seen in the export folder: (root, path, size, mtime)."""

    __tablename__ = "images"
    # A path of any length: unique by its fixed-size key (``_paths.path_key``), which the
    # B-tree can hold where the path itself may not (migration 0010).
    __table_args__ = (UniqueConstraint("root_key", "path_key", "size", "mtime_ns"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    root_key: Mapped[str] = mapped_column(String(200))
    rel_path: Mapped[str] = mapped_column(FsPath())  # lossless: any bytes, any length
    path_key: Mapped[str] = mapped_column(String(64))  # SHA-256 of the stored rel_path
    inode: Mapped[int | None] = mapped_column(BigInteger)  # st_ino when seen (renames)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    shape_json: Mapped[str | None] = mapped_column(Text)
    um_per_px: Mapped[float | None] = mapped_column(Float)
    um_per_px_source: Mapped[str | None] = mapped_column(String(40))
    profile: Mapped[str | None] = mapped_column(String(60))
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    # Where on the specimen (daemon/locations.py): case None for an image in no case folder.
    case_id: Mapped[str | None] = mapped_column(ForeignKey("cases.id"), index=True)
    location: Mapped[str | None] = mapped_column(String(60))
    location_source: Mapped[str | None] = mapped_column(String(20))
    location_issue: Mapped[str | None] = mapped_column(Text)
    # The earlier version of the same file (same root and path, other size/mtime): a
    # changed file is a new version linked to the one before, never a silent replacement.
    previous_id: Mapped[str | None] = mapped_column(ForeignKey("images.id"), index=True)

    @validates("rel_path")
    def _keep_path_key(self, _name: str, value: str) -> str:
        self.path_key = path_key(value)
        return value


class Job(Base):
    """The durable queue entry of one image; ends in done, duplicate, failed or superseded.

    ``superseded``: the file changed before this version could be read; the newer
    version is recorded as its own image (``previous_id`` points back) and assessed.
    ``moved``: the file was renamed before it was read; the same content (root, size,
    mtime) is recorded under its new name and assessed there.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(
            "state IN ('pending', 'processing', 'done', 'duplicate', 'failed', 'superseded', "
            "'moved')",
            name="state",
        ),
        CheckConstraint("attempts >= 0", name="attempts"),
        Index("ix_jobs_state_not_before", "state", "not_before"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"), unique=True)
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error_class: Mapped[str | None] = mapped_column(String(100))
    error_message: Mapped[str | None] = mapped_column(Text)
    prediction_id: Mapped[int | None] = mapped_column(ForeignKey("predictions.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Prediction(Base):
    """One assessment of one image by one model on one backend."""

    __tablename__ = "predictions"
    __table_args__ = (
        CheckConstraint("probability >= 0 AND probability <= 1", name="probability"),
        CheckConstraint("raw_probability >= 0 AND raw_probability <= 1", name="raw_probability"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"), index=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    backend: Mapped[str] = mapped_column(String(40))
    device: Mapped[str] = mapped_column(String(200))
    precision: Mapped[str] = mapped_column(String(10))
    raw_probability: Mapped[float] = mapped_column(Float)
    probability: Mapped[float] = mapped_column(Float)
    decision: Mapped[bool] = mapped_column(Boolean)
    threshold: Mapped[float] = mapped_column(Float)
    driving_tile: Mapped[int | None] = mapped_column(Integer)
    timings_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    # the quality gate's measurements (engine.quality: value, threshold, which way is bad)
    quality_json: Mapped[str | None] = mapped_column(Text)


class Tile(Base):
    """One region of interest: its box in source pixels (x0, y0, x1, y1) and probability."""

    __tablename__ = "tiles"
    __table_args__ = (UniqueConstraint("prediction_id", "idx"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id", ondelete="CASCADE"))
    idx: Mapped[int] = mapped_column(Integer)
    x0: Mapped[int] = mapped_column(Integer)
    y0: Mapped[int] = mapped_column(Integer)
    x1: Mapped[int] = mapped_column(Integer)
    y1: Mapped[int] = mapped_column(Integer)
    probability: Mapped[float] = mapped_column(Float)


class Heatmap(Base):
    """The Grad-CAM map as a 16-bit grey PNG; ``scale`` = source px per heatmap px."""

    __tablename__ = "heatmaps"

    prediction_id: Mapped[int] = mapped_column(
        ForeignKey("predictions.id", ondelete="CASCADE"), primary_key=True
    )
    png: Mapped[bytes] = mapped_column(LargeBinary)
    scale: Mapped[float] = mapped_column(Float)


class Alert(Base):
    """What theatre staff must see: a positive prediction, or an image not assessed."""

    __tablename__ = "alerts"
    __table_args__ = (
        CheckConstraint("kind IN ('tumour-at-margin', 'not-assessed')", name="kind"),
        CheckConstraint("prediction_id IS NOT NULL OR job_id IS NOT NULL", name="subject"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"), index=True)
    prediction_id: Mapped[int | None] = mapped_column(ForeignKey("predictions.id"))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"))
    message: Mapped[str] = mapped_column(Text)
    raised_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    acknowledged_by: Mapped[str | None] = mapped_column(String(200))
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ack_note: Mapped[str | None] = mapped_column(Text)


class AuditEvent(Base):
    """One link of the append-only, hash-chained audit log (see ``audit.py``)."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    ts: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(60), index=True)
    object_id: Mapped[str] = mapped_column(String(100), index=True)
    payload_json: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class Heartbeat(Base):
    """The single row the daemon refreshes so the dashboard can tell it is alive."""

    __tablename__ = "heartbeat"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    owner: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(200))
    details_json: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    beat_at: Mapped[datetime] = mapped_column(UTCDateTime)


class GroundTruth(Base):
    """The final histopathology margin status of one image, imported with its source.

    ``revision`` counts the imports that set it: 1, then +1 per correction (each
    correction's old and new values are in the audit trail, ``truth.corrected``).
    """

    __tablename__ = "ground_truth"
    __table_args__ = (
        CheckConstraint("status IN ('tumour', 'clear')", name="status"),
        CheckConstraint("revision >= 1", name="revision"),
    )

    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"), primary_key=True)
    status: Mapped[str] = mapped_column(String(10))
    reported_by: Mapped[str | None] = mapped_column(String(200))
    report_date: Mapped[date | None] = mapped_column(Date)
    note: Mapped[str | None] = mapped_column(Text)
    source_sha256: Mapped[str] = mapped_column(String(64))
    imported_by: Mapped[str] = mapped_column(String(200))
    imported_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    revision: Mapped[int] = mapped_column(Integer, default=1)


class PredictionSummary(Base):
    """A small image summary kept with a prediction for input-drift monitoring.

    ``kind`` names what ``data`` holds, e.g. ``pooled-features/v1``: the mean over the
    image's tiles of the CNN's global-average-pooled last feature map, float32
    little-endian (K values).
    """

    __tablename__ = "prediction_summaries"

    prediction_id: Mapped[int] = mapped_column(
        ForeignKey("predictions.id", ondelete="CASCADE"), primary_key=True
    )
    kind: Mapped[str] = mapped_column(String(40))
    data: Mapped[bytes] = mapped_column(LargeBinary)


class MonitorAlarm(Base):
    """A monitoring alarm (performance, calibration or input drift) until acknowledged."""

    __tablename__ = "monitor_alarms"
    __table_args__ = (
        CheckConstraint(
            "kind IN ('sensitivity', 'calibration', 'input-drift')", name="kind"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"), index=True)
    message: Mapped[str] = mapped_column(Text)
    details_json: Mapped[str] = mapped_column(Text)
    raised_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    acknowledged_by: Mapped[str | None] = mapped_column(String(200))
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ack_note: Mapped[str | None] = mapped_column(Text)
