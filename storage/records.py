"""Plain, frozen dataclasses that cross the storage boundary.

:class:`~marginwatch.storage.Store` takes and returns only these (never ORM objects
bound to a session), so the daemon and the dashboard cannot lazily load rows from a
closed session or write SQL of their own. Times are timezone-aware UTC.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

__all__ = [
    "AlertDetail",
    "AlertView",
    "AssessmentRecord",
    "AuditEventView",
    "AuditReport",
    "CASE_IMAGE_STATES",
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
    "TileRecord",
    "TruthEntry",
    "TruthImport",
]


@dataclass(frozen=True)
class Discovery:
    """A newly recorded image file and its job: pending, or ``claimed`` (leased in the
    same transaction, ``Store.record_discovery(lease_to=...)``)."""

    image_id: str
    job_id: int
    rel_path: str
    claimed: ClaimedJob | None = None


@dataclass(frozen=True)
class ClaimedJob:
    """A job leased to one worker until ``lease_expires_at``."""

    job_id: int
    image_id: str
    root_key: str
    rel_path: str
    size: int
    mtime_ns: int
    attempts: int
    lease_expires_at: datetime


@dataclass(frozen=True)
class TileRecord:
    """One tile's box in source pixels (x0, y0, x1, y1) and calibrated probability."""

    box: tuple[int, int, int, int]
    probability: float


@dataclass(frozen=True)
class AssessmentRecord:
    """Everything :meth:`Store.finish_job` records about one assessed image.

    ``shape`` is the source image shape as the engine reports it (e.g. (H, W, C)).
    ``heatmap_png`` is a 16-bit grey PNG (``marginwatch.engine.render.encode_heatmap_png``)
    and ``heatmap_scale`` the number of source pixels per heatmap pixel.
    """

    model_id: int
    sha256: str
    shape: tuple[int, ...]
    um_per_px: float
    um_per_px_source: str
    profile: str
    backend: str
    device: str
    precision: str
    raw_probability: float
    probability: float
    decision: bool
    threshold: float
    timings: Mapping[str, float] = field(default_factory=dict)
    tiles: Sequence[TileRecord] = ()
    driving_tile: int | None = None
    heatmap_png: bytes | None = None
    heatmap_scale: float | None = None
    summary_kind: str | None = None  # e.g. "pooled-features/v1" (input-drift monitoring)
    summary_data: bytes | None = None  # float32 little-endian
    quality: Mapping[str, Any] | None = None  # the quality gate's report (JSON-ready)

    @classmethod
    def from_assessment(
        cls,
        assessment: Any,
        *,
        model_id: int,
        precision: str | None = None,
        heatmap_png: bytes | None = None,
    ) -> AssessmentRecord:
        """Build from an engine ``Assessment`` (duck-typed: storage imports no torch).

        ``heatmap_png`` is the heatmap already encoded by the caller (the daemon's
        finisher, before the transaction): storage stores bytes and encodes nothing.
        """
        quality = getattr(assessment, "quality", None)
        return cls(
            model_id=model_id,
            sha256=assessment.sha256,
            shape=tuple(int(n) for n in assessment.shape),
            um_per_px=float(assessment.um_per_px),
            um_per_px_source=str(getattr(assessment, "um_per_px_source", "")),
            profile=str(assessment.profile),
            backend=str(assessment.backend),
            device=str(assessment.device),
            precision=str(precision or getattr(assessment, "precision", "")),
            raw_probability=float(assessment.raw_probability),
            probability=float(assessment.probability),
            decision=bool(assessment.decision),
            threshold=float(assessment.threshold),
            timings={str(k): float(v) for k, v in dict(assessment.timings).items()},
            tiles=tuple(
                TileRecord(tuple(int(v) for v in t.box), float(t.probability))  # type: ignore[arg-type]
                for t in assessment.tiles
            ),
            driving_tile=getattr(assessment, "driving_tile", None),
            heatmap_png=heatmap_png,
            heatmap_scale=(
                None if heatmap_png is None else float(getattr(assessment, "heatmap_scale", 1.0))
            ),
            **_summary(getattr(assessment, "feature_mean", None)),
            quality=None if quality is None else quality.to_dict(),
        )


def _summary(feature_mean: Any) -> dict[str, Any]:
    """The pooled-feature summary as stored: float32 little-endian bytes (no numpy needed)."""
    if feature_mean is None:
        return {}
    import array
    import sys

    values = array.array("f", (float(v) for v in feature_mean))
    if sys.byteorder != "little":
        values.byteswap()
    return {"summary_kind": "pooled-features/v1", "summary_data": values.tobytes()}


@dataclass(frozen=True)
class FinishOutcome:
    prediction_id: int
    alert_id: int | None
    audit_seq: int


@dataclass(frozen=True)
class FailOutcome:
    """``state`` is "pending" (retry at ``not_before``) or "failed" (with ``alert_id``)."""

    state: str
    attempts: int
    not_before: datetime | None
    alert_id: int | None


@dataclass(frozen=True)
class AlertView:
    id: int
    kind: str
    image_id: str
    rel_path: str
    prediction_id: int | None
    job_id: int | None
    probability: float | None
    message: str
    raised_at: datetime
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    ack_note: str | None = None
    location: str | None = None  # the image's margin location (None: recorded before cases)

    @property
    def acknowledged(self) -> bool:
        return self.acknowledged_at is not None


@dataclass(frozen=True)
class AlertDetail:
    """An alert with what the dashboard draws: tiles and the heatmap PNG."""

    alert: AlertView
    decision: bool | None
    threshold: float | None
    backend: str | None
    tiles: tuple[TileRecord, ...]
    driving_tile: int | None
    heatmap_png: bytes | None
    heatmap_scale: float | None


@dataclass(frozen=True)
class ImageRow:
    """One image with its final state: a row of ``audit list`` and ``recent_results``."""

    image_id: str
    rel_path: str
    first_seen: datetime
    state: str
    attempts: int
    sha256: str | None
    prediction_id: int | None
    probability: float | None
    decision: bool | None
    threshold: float | None
    backend: str | None
    model_digest: str | None
    alert_kind: str | None
    acknowledged_by: str | None
    error_class: str | None
    error_message: str | None
    finished_at: datetime | None
    previous_image_id: str | None = None  # the earlier version of the same file, if any


@dataclass(frozen=True)
class AuditEventView:
    seq: int
    ts: datetime
    actor: str
    action: str
    object_id: str
    payload: dict[str, Any]
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class ImageDetail:
    """Everything recorded about one image (``marginwatch audit show``)."""

    row: ImageRow
    root_key: str
    size: int
    mtime_ns: int
    shape: tuple[int, ...] | None
    um_per_px: float | None
    um_per_px_source: str | None
    profile: str | None
    model_architecture: str | None
    device: str | None
    precision: str | None
    raw_probability: float | None
    timings: dict[str, float]
    tiles: tuple[TileRecord, ...]
    driving_tile: int | None
    heatmap_png: bytes | None
    heatmap_scale: float | None
    alerts: tuple[AlertView, ...]
    events: tuple[AuditEventView, ...]
    # the quality gate's report (engine.quality ``QualityReport.to_dict``): stored with the
    # prediction, or, for an image the gate stopped, from its ``image.failed`` event
    quality: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Counters:
    """Counts since a time (images first seen since then) plus the live queue."""

    since: datetime
    discovered: int
    assessed: int
    positive: int
    duplicate: int
    failed: int
    pending: int
    processing: int
    open_alerts: int


@dataclass(frozen=True)
class HeartbeatView:
    owner: str
    status: str
    details: dict[str, Any]
    started_at: datetime
    beat_at: datetime

    def age_seconds(self, now: datetime) -> float:
        return (now - self.beat_at).total_seconds()


@dataclass(frozen=True)
class AuditReport:
    """The result of walking the audit chain.

    ``ok`` is False when a link is broken (``first_bad_seq`` and ``reason`` say where and
    why), when the anchor (a head seen earlier, kept outside the database) is missing
    from the chain (a truncated tail or a rewritten log), or when a clinical row
    disagrees with the digest its event recorded (``bad_row`` names it).
    """

    ok: bool
    events: int
    head_seq: int
    head_hash: str
    first_bad_seq: int | None = None
    reason: str | None = None
    anchor_checked: bool = False
    #: the first clinical row that disagrees with the chain ("predictions/12"), if any
    bad_row: str | None = None
    rows_checked: int = 0  # clinical rows whose digest matched
    rows_legacy: int = 0  # rows recorded before row digests existed (not judged)


# --- cases and margin locations --------------------------------------------------------

#: an image's state within its case, worst first: the order a location's status takes.
CASE_IMAGE_STATES = ("tumour", "not-assessable", "pending", "clear")


@dataclass(frozen=True)
class Placement:
    """Where a newly seen image sits: its case folder and margin location.

    ``case_folder`` is None for an image directly in the export root (no case).
    ``source`` says how the location was found ("sidecar", "filename", "default");
    ``issue`` is set when the input was bad (a sidecar that is not JSON, an unknown or
    disagreeing location, no case folder): the image is still assessed, and the reason
    is shown to a person.
    """

    case_folder: str | None
    location: str
    source: str
    issue: str | None = None


@dataclass(frozen=True)
class LocationStatus:
    """One margin location of a case: the worst state of its images."""

    location: str
    state: str  # one of CASE_IMAGE_STATES
    images: int
    max_probability: float | None
    last_scan_at: datetime


@dataclass(frozen=True)
class CaseView:
    """A case with its overall status (worst location), counts and lifecycle."""

    case_id: str
    root_key: str
    folder: str
    state: str  # "open" | "closed"
    status: str  # worst of CASE_IMAGE_STATES over its images; "empty" with none
    counts: Mapping[str, int]  # images per CASE_IMAGE_STATES entry
    locations: tuple[LocationStatus, ...]
    images: int
    issues: int  # images whose location came with a problem (see Placement.issue)
    opened_at: datetime
    last_image_at: datetime
    closed_at: datetime | None
    closed_by: str | None
    close_reason: str | None
    close_note: str | None
    reopened: int

    def label(self, show: str = "folder") -> str:
        """What a screen or report calls the case: its folder name, or its opaque id."""
        return self.folder if show == "folder" else f"case {self.case_id[:8]}"


@dataclass(frozen=True)
class CaseImage:
    """One image of a case, with its state there and what was found."""

    image_id: str
    rel_path: str
    location: str
    location_source: str | None
    location_issue: str | None
    first_seen: datetime
    state: str  # one of CASE_IMAGE_STATES
    job_state: str
    prediction_id: int | None
    probability: float | None
    threshold: float | None
    decision: bool | None
    model_digest: str | None
    error_message: str | None


@dataclass(frozen=True)
class CaseDetail:
    """A case, its images (oldest first) and the audit events about the case itself."""

    case: CaseView
    images: tuple[CaseImage, ...]
    events: tuple[AuditEventView, ...]


@dataclass(frozen=True)
class ImageKey:
    """An image a ground-truth key matched: its id, export root and path."""

    image_id: str
    root_key: str
    rel_path: str


@dataclass(frozen=True)
class TruthEntry:
    """One validated ground-truth row, resolved to the images it names."""

    line: int
    key: str  # as written in the file (for messages)
    image_ids: tuple[str, ...]
    status: str  # "tumour" | "clear"
    reported_by: str | None = None
    report_date: date | None = None
    note: str | None = None


@dataclass(frozen=True)
class TruthImport:
    """What one import did; ``corrections`` are (image_id, old status, new status, line)."""

    added: int
    corrected: int
    updated: int  # same status, other details (reporter, date, note) changed
    unchanged: int
    corrections: tuple[tuple[str, str, str, int], ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.added or self.corrected or self.updated)


@dataclass(frozen=True)
class MonitorRow:
    """One assessed image for monitoring: its prediction, truth (if any) and summary."""

    image_id: str
    root_key: str
    rel_path: str
    prediction_id: int
    model_id: int
    created_at: datetime
    probability: float
    decision: bool
    threshold: float
    truth: str | None  # "tumour" | "clear" | None
    summary_kind: str | None = None
    summary_data: bytes | None = None


@dataclass(frozen=True)
class MonitorAlarmView:
    id: int
    kind: str
    model_id: int
    message: str
    details: dict[str, Any]
    raised_at: datetime
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None
    ack_note: str | None = None

    @property
    def acknowledged(self) -> bool:
        return self.acknowledged_at is not None
