"""The dashboard's data source: one :class:`Snapshot` per frame, read from the database.

:class:`Source` opens the database read-only (and keeps trying while the file does not
exist yet, saying so in the snapshot); the rendering (:mod:`.dashboard`) never touches
the database. Imports no torch.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from marginwatch.engine.config import CasesConfig
from marginwatch.engine.errors import MarginwatchError

from ._dashboard_picture import Picture, load_picture

__all__ = ["MAX_ALERT_ROWS", "Snapshot", "Source", "latency_seconds"]

THROUGHPUT_WINDOW = timedelta(minutes=10)
MAX_ALERT_ROWS = 12
RECENT_ROWS_FETCHED = 40
#: what the header shows about the daemon, as the daemon writes it in its heartbeat details
DAEMON_KEYS = ("model_digest", "architecture", "synthetic_demo", "backend", "device", "precision")


@dataclass
class Snapshot:
    """Everything one frame shows; ``db_problem`` is set when nothing could be read."""

    now: datetime
    db_location: str
    db_problem: str | None = None
    heartbeat: Any = None  # HeartbeatView | None
    stale_after_seconds: float = 10.0
    daemon: dict[str, Any] = field(default_factory=dict)  # model/backend (heartbeat details)
    alerts: list[Any] = field(default_factory=list)  # AlertView, newest first
    alarms: list[Any] = field(default_factory=list)  # open MonitorAlarmView, newest first
    picture: Picture | None = None
    picture_alert: Any = None  # AlertView the picture belongs to
    regions: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)  # driving box
    recent: list[Any] = field(default_factory=list)  # ImageRow
    counters: Any = None  # Counters since local midnight
    queue_depth: int = 0
    per_minute: float | None = None
    median_latency_seconds: float | None = None
    case: Any = None  # CaseDetail of the current case, or None
    cases: CasesConfig = field(default_factory=CasesConfig)  # vocabulary, display label


def latency_seconds(row: Any) -> float | None:
    if row.finished_at is None:
        return None
    return max(0.0, (row.finished_at - row.first_seen).total_seconds())


def _local_midnight(now: datetime) -> datetime:
    local = now.astimezone()
    return local.replace(hour=0, minute=0, second=0, microsecond=0).astimezone(UTC)


class Source:
    """Reads snapshots from a database it opens read-only; reopens while it is missing."""

    def __init__(
        self,
        db_url: str,
        *,
        recent_rows: int = 10,
        stale_after_seconds: float = 10.0,
        max_pixels: int = 30_000 * 30_000,
        busy_timeout_seconds: float = 2.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        cases: CasesConfig | None = None,
    ) -> None:
        self.cases = cases or CasesConfig()
        self.db_url = db_url
        self.recent_rows = recent_rows
        self.stale_after_seconds = stale_after_seconds
        self.max_pixels = max_pixels
        self._busy = busy_timeout_seconds
        self._clock = clock
        self._store: Any = None
        self._daemon: tuple[str, dict[str, Any]] | None = None
        self._picture: Picture | None = None
        self._regions: dict[int, tuple[int, int, int, int] | None] = {}

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> Any:
        if self._store is None:
            from marginwatch.storage import Store

            self._store = Store.open(self.db_url, readonly=True,
                                     busy_timeout_seconds=self._busy)
        return self._store

    def snapshot(self) -> Snapshot:
        now = self._clock()
        shot = Snapshot(now=now, db_location=self.db_url,
                        stale_after_seconds=self.stale_after_seconds, cases=self.cases)
        try:
            store = self._open()
            shot.db_location = store.location
            self._read(store, shot)
        except MarginwatchError as exc:
            self.close()  # reopen next time: the file may appear, the schema may be created
            shot.db_problem = str(exc)
        return shot

    def _read(self, store: Any, shot: Snapshot) -> None:
        shot.heartbeat = store.read_heartbeat()
        if shot.heartbeat is not None:
            shot.daemon = self._daemon_info(store, shot.heartbeat)
        shot.alerts = store.open_alerts()
        shot.alarms = store.open_monitor_alarms()
        # The picture: the newest tumour alert's Grad-CAM (a not-assessed alert has none;
        # it is shown as its message only when no tumour alert is open).
        tumour = [a for a in shot.alerts if a.kind == "tumour-at-margin"]
        newest = tumour[0] if tumour else (shot.alerts[0] if shot.alerts else None)
        if newest is not None:
            if newest.prediction_id is None:
                self._picture = Picture(newest.id, None, None, newest.message, None)
            elif self._picture is None or self._picture.alert_id != newest.id:
                self._picture = load_picture(store, newest, max_pixels=self.max_pixels)
            shot.picture = self._picture
            shot.picture_alert = newest
        for alert in shot.alerts[:MAX_ALERT_ROWS]:
            box_ = self._region(store, alert)
            if box_ is not None:
                shot.regions[alert.id] = box_
        shot.recent = store.recent_results(max(self.recent_rows, RECENT_ROWS_FETCHED))
        shot.case = store.current_case()
        shot.counters = store.counters(_local_midnight(shot.now))
        shot.queue_depth = store.queue_depth()
        since = shot.now - THROUGHPUT_WINDOW
        window = [r for r in store.list_images(since=since - THROUGHPUT_WINDOW)
                  if r.finished_at is not None and r.finished_at >= since]
        shot.per_minute = len(window) / (THROUGHPUT_WINDOW.total_seconds() / 60.0)
        latencies = [v for v in (latency_seconds(r) for r in window if r.state == "done")
                     if v is not None]
        shot.median_latency_seconds = statistics.median(latencies) if latencies else None

    def _region(self, store: Any, alert: Any) -> tuple[int, int, int, int] | None:
        """The driving tile's box (source pixels) of an alert; cached, alerts don't change."""
        if alert.id not in self._regions:
            found = None
            if alert.prediction_id is not None:
                detail = store.image_detail(alert.image_id)
                if detail.driving_tile is not None and detail.driving_tile < len(detail.tiles):
                    found = tuple(detail.tiles[detail.driving_tile].box)
            self._regions[alert.id] = found
        return self._regions[alert.id]

    def _daemon_info(self, store: Any, heartbeat: Any) -> dict[str, Any]:
        """Model, backend and device of the running daemon: from its heartbeat's details.

        A daemon older than the heartbeat details is looked up in the audit log instead
        (its ``daemon.start`` payload), once per owner.
        """
        details = heartbeat.details or {}
        if "backend" in details or "model_digest" in details:
            return {k: details[k] for k in DAEMON_KEYS if k in details}
        owner = heartbeat.owner
        if self._daemon is not None and self._daemon[0] == owner and self._daemon[1]:
            return self._daemon[1]
        info: dict[str, Any] = {}
        for event in store.audit_events(object_id=owner):
            if event.action == "daemon.start":
                info = dict(event.payload)
        self._daemon = (owner, info)
        return info
