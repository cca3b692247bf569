"""The daemon's intake (a mixin of :class:`~marginwatch.daemon.service.Service`).

From watchdog sightings and reconcile scans to recorded jobs: sightings are noted in the
:class:`ReadinessTracker` (a new folder starts a scan), scans are advanced a slice at a
time, and each ready file is recorded durably as a pending job
(``Store.record_discovery``), with its case and location; a file ready by its format,
with a worker free, is leased in that same transaction and goes straight to the
pipeline. Kept apart so service.py stays near its size guideline.
"""

from __future__ import annotations

import logging
import os
import queue
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from marginwatch.engine.errors import DatabaseUnavailableError
from marginwatch.storage.records import Placement

from .locations import resolve as resolve_placement
from .observer import PathFilter, Sighting, scan_folder

if TYPE_CHECKING:
    from marginwatch.engine.config import Config

    from ._claim_timing import ClaimTiming
    from .locations import LocationRules
    from .pipeline import Pipeline
    from .readiness import ReadinessTracker

__all__ = ["IntakeMethods", "SCAN_SLICE", "SIGHTINGS_SLICE"]

# the Service's logger, so that these lines read as before (``marginwatch.daemon.service``)
logger = logging.getLogger(__name__.rpartition(".")[0] + ".service")

SCAN_SLICE = 256  # entries of a reconcile scan taken per main-loop step
SIGHTINGS_SLICE = 2000


class IntakeMethods:
    """Sightings, scans and ready files into the queue; the Service's intake.

    Uses these attributes, all set in ``Service.__init__``: ``config``, ``root``,
    ``root_key``, ``store``, ``owner``, ``tracker``, ``pipeline``, ``recorded``,
    ``claimed``, ``_sightings``, ``_filter``, ``_scans``, ``_locations``, ``_known``,
    ``_triggered_poll_at``, ``_claims`` and ``_clock``; and the Service's
    ``_has_capacity()`` (shared with its claims, so it stays there).
    """

    config: Config
    root: str
    root_key: str
    store: Any
    owner: str
    tracker: ReadinessTracker
    pipeline: Pipeline
    recorded: int
    claimed: int
    _sightings: queue.Queue[Sighting]
    _filter: PathFilter
    _scans: list[Iterator[str]]
    _locations: LocationRules
    _known: set[tuple[str, int, int]]
    _triggered_poll_at: float
    _claims: ClaimTiming  # a discovery that leaves a job pending hints the Service's _claim
    _clock: Callable[[], float]

    def _has_capacity(self) -> bool:  # pragma: no cover - the Service's
        raise NotImplementedError

    def _note(self, sighting: Sighting) -> None:
        if sighting.kind == "folder":
            self._scans.append(scan_folder(self.root, self._filter, under=sighting.rel_path))
        else:
            self.tracker.note(sighting.kind, sighting.rel_path)
            if sighting.kind in ("closed", "moved_in"):
                due = self._clock() + self.tracker.settle_seconds
                self._triggered_poll_at = min(self._triggered_poll_at, due)

    def _drain_sightings(self) -> None:
        for _ in range(SIGHTINGS_SLICE):
            try:
                self._note(self._sightings.get_nowait())
            except queue.Empty:
                return

    def _step_scans(self) -> None:
        budget = SCAN_SLICE
        while self._scans and budget > 0:
            scan = self._scans[0]
            for rel_path in scan:
                if rel_path not in self.tracker:
                    self.tracker.note("scan", rel_path)
                budget -= 1
                if budget == 0:
                    return
            self._scans.pop(0)

    def _record_ready(self) -> None:
        ready_files = self.tracker.poll()
        for index, ready in enumerate(ready_files):
            key = (ready.rel_path, ready.size, ready.mtime_ns)
            if key in self._known:
                continue
            # A file ready by its format (a close or move event, complete structure) is
            # leased in its discovery transaction when a worker is free: one commit less
            # between the event and the alert. Files found by polls wait for _claim.
            lease_now = ready.by == "format" and self._has_capacity()
            try:
                found = self.store.record_discovery(
                    self.root_key, ready.rel_path, ready.size, ready.mtime_ns, self.owner,
                    placement=self._placement(ready.rel_path), inode=ready.inode,
                    lease_to=self.owner if lease_now else None,
                    lease_seconds=self.config.daemon.lease_seconds,
                )
            except DatabaseUnavailableError:
                # The database, not the file: these files wait again (nothing is lost
                # until the next rescan), and the step is retried.
                for later in ready_files[index:]:
                    self.tracker.note("scan", later.rel_path)
                raise
            except Exception as exc:  # noqa: BLE001 - one file never stops the daemon
                # (a row the database refuses, e.g. a name longer than a column holds,
                # must not hold up the files after it)
                logger.error("a ready file could not be recorded (%s); skipped until it changes",
                             type(exc).__name__)
                found = None
            self._known.add(key)
            if found is not None:
                self.recorded += 1
                if found.claimed is not None:
                    self.claimed += 1
                    self.pipeline.submit(found.claimed)
                else:  # recorded pending: _claim leases it when there is room
                    self._claims.hint()

    def _placement(self, rel_path: str) -> Placement:
        """Case and location of a new image; never raises (the image must not be lost)."""
        try:
            return resolve_placement(self.root, rel_path, self._locations)
        except Exception as exc:  # a bug here must not stop intake: unspecified, with why
            logger.error("location of a new image could not be resolved (%s)", type(exc).__name__)
            head, sep, _ = os.fsdecode(rel_path).partition("/")
            return Placement(
                case_folder=head if sep else None, location="unspecified", source="default",
                issue=f"the location could not be resolved ({type(exc).__name__}); "
                "see the daemon log and report it",
            )

