"""The daemon's main loop: intake, queue, heartbeat, signals, systemd.

One main thread does everything that is not image work, in small steps so that it
stays responsive (signals, WATCHDOG=1):

- drain watchdog sightings into the :class:`ReadinessTracker`; new folders are scanned;
- advance the reconcile scan (at start and every ``rescan_seconds``) a slice at a time;
- every ``poll_interval_seconds``, and ``settle_seconds`` after a close-after-write or
  move-in event (so such a file is taken when it has settled, not at the next tick):
  poll the tracker; each ready file is recorded durably as a pending job
  (``Store.record_discovery``; the same path+size+mtime never twice); a file ready by
  its format, with a worker free, is leased in that same transaction and goes straight
  to the pipeline;
- claim jobs (leases) while the :class:`Pipeline` has room, when one may be waiting (a
  discovery left it pending, the pipeline made room, or once a poll interval); extend
  the leases of jobs in flight; put expired leases of dead workers back (``requeue_expired``);
- heartbeat row + ``STATUS=`` every ``heartbeat_seconds``; ``WATCHDOG=1`` when asked.

SIGTERM/SIGINT: stop intake (observer, scans, claims), let the pipeline finish within
``shutdown_seconds``, release what it could not (``Store.release_job``: pending again,
the attempt not counted), audit ``daemon.stop``, exit 0. At start-up, jobs leased to a
daemon of this host whose process is gone (SIGKILL, crash) are put back at once
(``Store.requeue_orphans``) instead of after their lease.
SIGHUP: reload the configuration file, apply what can change live, audit
``config.reloaded`` (what changed, what needs a restart).

This module holds the main loop, the queue, the heartbeat and the start-up
(:func:`run_daemon`); the intake (sightings, scans, recording ready files) is
:class:`._intake.IntakeMethods` and SIGHUP's reload :class:`._reload.ReloadMethods`,
which :class:`Service` inherits.
"""

from __future__ import annotations

import faulthandler
import logging
import math
import os
import queue
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from marginwatch.engine.config import Config, load_config
from marginwatch.engine.errors import (
    AuditChainError,
    ConflictError,
    DaemonError,
    MarginwatchError,
    NotFoundError,
    StorageError,
)
from marginwatch.engine.pathnames import display_path

from ._claim_timing import ClaimTiming
from ._intake import IntakeMethods
from ._reload import LIVE_DAEMON_FIELDS, RESTART_ENGINE_FIELDS, ReloadMethods
from .locations import LocationRules
from .observer import FolderObserver, PathFilter, Sighting, scan_folder
from .pipeline import Pipeline, Settings
from .readiness import ReadinessTracker
from .sdnotify import Notifier
from .signals import SignalFlags

__all__ = ["LIVE_DAEMON_FIELDS", "RESTART_ENGINE_FIELDS", "Service", "run_daemon"]

logger = logging.getLogger(__name__)

#: what the heartbeat says about the model and backend (the dashboard's header reads it).
HEARTBEAT_MODEL_KEYS = (
    "model_digest", "architecture", "synthetic_demo", "backend", "device", "precision",
)
IDLE_CASE_CHECK_SECONDS = 30.0  # how often open cases are checked for cases.idle_close_seconds


def configure_logging(level: str | None = None, environ: Mapping[str, str] = os.environ) -> None:
    """One line per event on stderr; journald adds its own timestamps."""
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or environ.get("MARGINWATCH_LOG_LEVEL", "INFO").upper())
    logging.getLogger("watchdog").setLevel(logging.WARNING)


class Service(IntakeMethods, ReloadMethods):
    """The running daemon around an open store, a loaded model and a backend.

    ``stages`` has ``prepare``/``finish``/``record`` bound to the model (see
    :class:`~marginwatch.daemon.pipeline.Pipeline`); ``infer`` runs the backend.
    ``reload_config`` returns the configuration anew (SIGHUP). ``clock`` is injectable.
    ``described`` (from ``load_stages``: model digest, architecture, synthetic_demo,
    backend, device, precision) goes into every heartbeat for the dashboard's header.
    """

    def __init__(
        self,
        config: Config,
        *,
        watch_dir: Path,
        store: Any,
        stages: Any,
        infer: Callable[[Any], Any],
        model_id: int,
        owner: str,
        notifier: Notifier,
        flags: SignalFlags,
        reload_config: Callable[[], Config] | None = None,
        clock: Callable[[], float] = time.monotonic,
        described: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.root = os.path.realpath(watch_dir)
        try:
            self.root.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise DaemonError(
                f"{display_path(self.root)}: the watch folder's own path is not UTF-8; "
                "rename it or watch a folder above it (names inside it may be anything)"
            ) from exc
        self.root_key = self.root
        self.store = store
        self.stages = stages
        self.model_id = model_id
        self.owner = owner
        self.notifier = notifier
        self.flags = flags
        self._reload_config = reload_config
        self._clock = clock
        self._model_details = {k: (described or {})[k] for k in HEARTBEAT_MODEL_KEYS
                               if k in (described or {})}
        d = config.daemon
        self._sightings: queue.Queue[Sighting] = queue.Queue()
        self._filter = PathFilter(d.image_globs, d.ignore_globs)
        self.observer = FolderObserver(
            self.root, self._filter, self._sightings, kind=d.observer,
            poll_interval_seconds=d.poll_interval_seconds,
        )
        self.tracker = ReadinessTracker(
            self.root, settle_seconds=d.settle_seconds, stable_polls=d.stable_polls, clock=clock
        )
        self.pipeline = Pipeline(
            store=store, engine=stages, infer=infer, model_id=model_id, root=self.root,
            owner=owner, settings=Settings(d.max_attempts, d.retry_delay_seconds),
            workers=d.workers, max_batch_tiles=d.max_batch_tiles,
            max_batch_wait_ms=d.max_batch_wait_ms,
        )
        self._scans: list[Iterator[str]] = []
        self._locations = LocationRules.from_config(config.cases)
        self._triggered_poll_at = math.inf  # a close/move-in event: poll when it has settled
        self._known: set[tuple[str, int, int]] = set()
        self.recorded = 0
        self.claimed = 0
        # _claim runs a write transaction: only when a job may be waiting (._claim_timing)
        self._claims = ClaimTiming()
        self._errors_in_a_row = 0

    # --- lifecycle -------------------------------------------------------------------------

    def should_keep_running(self) -> bool:
        return not self.flags.stop.is_set()

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.observer.stop()

    def _capacity(self) -> int:
        d = self.config.daemon
        return 2 * d.workers + max(1, d.max_batch_tiles // 2)

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit code (0 after a clean stop)."""
        if not os.path.isdir(self.root):
            raise DaemonError(f"{self.root}: watch folder does not exist or is not a folder")
        self._requeue_orphans()
        self.pipeline.start()
        self.observer.start()
        self._scans.append(scan_folder(self.root, self._filter))
        self._step_scans()  # the first scan has started
        self.notifier.ready(status="watching; first scan running")
        logger.info("ready: watching with %s observer as %s", self.observer.kind, self.owner)
        now = self._clock()
        next_poll = next_beat = next_lease = now
        next_rescan = now + self.config.daemon.rescan_seconds
        next_idle_check = now
        next_drift_check = now + self.config.daemon.drift_check_seconds
        watchdog_every = self.notifier.watchdog_interval_seconds
        next_watchdog = now
        exit_code = 0
        while self.should_keep_running():
            d = self.config.daemon
            now = self._clock()
            if watchdog_every is not None and now >= next_watchdog:
                self.notifier.watchdog()
                next_watchdog = now + watchdog_every
            if self.flags.reload.is_set():
                self.flags.reload.clear()
                self.reload()
            if not self.pipeline.healthy():
                logger.error("a worker thread died; stopping so that systemd restarts the daemon")
                self.flags.request_stop("worker-died")
                exit_code = 1
                break
            try:
                self._drain_sightings()
                self._step_scans()
                if now >= next_poll or self._clock() >= self._triggered_poll_at:
                    self._triggered_poll_at = math.inf
                    self._record_ready()
                    next_poll = now + d.poll_interval_seconds
                if now >= next_rescan:
                    self._scans.append(scan_folder(self.root, self._filter))
                    next_rescan = now + d.rescan_seconds
                if now >= next_lease:
                    self._keep_leases()
                    next_lease = now + max(0.2, d.lease_seconds / 3)
                self._claim(now)
                if now >= next_idle_check:
                    self._close_idle_cases()
                    next_idle_check = now + min(IDLE_CASE_CHECK_SECONDS,
                                                self.config.cases.idle_close_seconds / 2)
                if d.drift_check_seconds and now >= next_drift_check:
                    next_drift_check = now + d.drift_check_seconds
                    self._check_drift()
                if now >= next_beat:
                    self._beat("running")
                    next_beat = now + d.heartbeat_seconds
                self._errors_in_a_row = 0
            except StorageError as exc:
                self._errors_in_a_row += 1
                logger.error("database step failed (%s: %s); retrying", type(exc).__name__, exc)
                self.flags.stop.wait(min(5.0, 0.2 * self._errors_in_a_row))
            except Exception as exc:  # noqa: BLE001 - nothing may stop the main loop
                # (the message is not logged: it may carry a file name)
                self._errors_in_a_row += 1
                frame = traceback.extract_tb(exc.__traceback__)[-1:]
                where = f"{frame[0].filename}:{frame[0].lineno}" if frame else "?"
                logger.error("main-loop step failed (%s at %s); retrying",
                             type(exc).__name__, where)
                self.flags.stop.wait(min(5.0, 0.2 * self._errors_in_a_row))
            busy = bool(self._scans) or not self._sightings.empty()
            if not busy:
                try:
                    sighting = self._sightings.get(timeout=0.05)
                except queue.Empty:
                    pass
                else:
                    self._note(sighting)
        self._shutdown()
        return exit_code

    def _shutdown(self) -> None:
        d = self.config.daemon
        started = self._clock()
        reason = self.flags.stop_reason or "stop"
        logger.info("stopping (%s): intake closed, %d job(s) in flight",
                    reason, self.pipeline.in_flight())
        self.notifier.stopping(status=f"stopping ({reason})")
        self.observer.stop()
        self._scans.clear()
        left = self.pipeline.stop(max(0.1, d.shutdown_seconds * 0.7))
        released = 0
        for job in left:
            try:
                # Not the file's fault: back to pending at once, the attempt not counted.
                self.store.release_job(job.job_id, self.owner)
                released += 1
            except (ConflictError, NotFoundError):
                pass
            except MarginwatchError as exc:
                logger.error("job %d: could not be released (%s); its lease will expire",
                             job.job_id, type(exc).__name__)
        counts = dict(self.pipeline.counts)
        try:
            self._beat("stopped")
            self.store.audit("daemon.stop", self.owner, {
                "reason": reason, "released_jobs": released, "counts": counts,
                "recorded": self.recorded, "seconds": round(self._clock() - started, 3),
            }, self.owner)
        except MarginwatchError as exc:
            logger.error("could not record the stop (%s)", type(exc).__name__)
        logger.info("stopped (%s) in %.2fs: %d released, counts %s",
                    reason, self._clock() - started, released, counts)

    # --- cases and drift ---------------------------------------------------------------------

    def _check_drift(self) -> None:
        from ._monitor_cli import check_drift

        for alarm in check_drift(self.store, self.model_id, actor=self.owner):
            if alarm["state"] == "raised":
                logger.warning("input-drift alarm %d raised (see marginwatch monitor)",
                               alarm["alarm_id"])

    def _close_idle_cases(self) -> None:
        closed = self.store.close_idle_cases(self.config.cases.idle_close_seconds, self.owner)
        if closed:
            logger.info("%d case(s) closed after %.0f s without a new image",
                        closed, self.config.cases.idle_close_seconds)

    # --- the queue ---------------------------------------------------------------------------

    def _has_capacity(self) -> bool:
        return self.pipeline.in_flight() < self._capacity() and self.should_keep_running()

    def _claim(self, now: float) -> None:
        """Lease pending jobs while the pipeline has room, when one may be waiting."""
        d = self.config.daemon
        if not self._claims.due(now, self.pipeline.in_flight(), d.poll_interval_seconds):
            return
        stopped_full = False
        while True:
            if not self._has_capacity():
                stopped_full = True
                break
            # Only our folder's jobs: daemons watching other folders may share the database.
            job = self.store.claim_job(self.owner, d.lease_seconds, root_key=self.root_key)
            if job is None:
                break
            self.claimed += 1
            self.pipeline.submit(job)
        self._claims.looked(self.pipeline.in_flight(), stopped_full=stopped_full)

    def _requeue_orphans(self) -> None:
        """At start-up: jobs held by daemons of this host that no longer run go back now.

        A SIGKILLed (or crashed) daemon's leases would otherwise block its jobs for up
        to ``lease_seconds``. Called before the first claim, so anything leased to our
        own owner string (a reused pid, e.g. pid 1 in a container) is an orphan too.
        """
        prefix, _, _ = self.owner.rpartition(":")
        try:
            n = self.store.requeue_orphans(
                prefix + ":", lambda owner: owner != self.owner and _owner_alive(owner),
                max_attempts=self.config.daemon.max_attempts, actor=self.owner,
            )
        except StorageError as exc:
            logger.error("could not requeue orphaned jobs (%s); their leases will expire",
                         type(exc).__name__)
            return
        if n:
            logger.info("%d job(s) held by a daemon of this host that is gone put back", n)

    def _keep_leases(self) -> None:
        d = self.config.daemon
        for job in self.pipeline.in_flight_jobs():
            try:
                self.store.extend_lease(job.job_id, self.owner, d.lease_seconds)
            except (ConflictError, NotFoundError):
                pass  # finished meanwhile
        requeued = self.store.requeue_expired(max_attempts=d.max_attempts, actor=self.owner)
        if requeued:
            logger.info("%d job(s) with an expired lease put back in the queue", requeued)

    def _status_text(self) -> str:
        c = self.pipeline.counts
        return (f"watching; in flight {self.pipeline.in_flight()}, settling {len(self.tracker)}, "
                f"recorded {self.recorded}, assessed {c['assessed']}, duplicate {c['duplicate']}, "
                f"failed {c['failed']}, retries {c['retry']}")

    def _beat(self, status: str) -> None:
        c = self.pipeline.counts
        self.store.heartbeat(self.owner, status, details={
            "in_flight": self.pipeline.in_flight(), "settling": len(self.tracker),
            "recorded": self.recorded, "assessed": c["assessed"], "duplicate": c["duplicate"],
            "failed": c["failed"], "retries": c["retry"], "observer": self.observer.kind,
            **self._model_details,
        })
        self.notifier.status(self._status_text())


# --- start-up ----------------------------------------------------------------------------------


def _owner() -> str:
    """``marginwatch-daemon@<host>:<pid>``; :func:`_owner_alive` reads the pid back."""
    return f"marginwatch-daemon@{socket.gethostname()}:{os.getpid()}"


def _owner_alive(owner: str) -> bool:
    """Whether the process named by a same-host owner string still exists.

    Unknown forms count as alive (their lease expires as usual). A pid reused by
    another process also counts as alive: only the lease frees those jobs then.
    """
    try:
        pid = int(owner.rpartition(":")[2])
    except ValueError:
        return True
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def _keep_anchor(store: Any, d: Any, owner: str) -> None:
    """Keep the audit chain's head in the anchor file; a mismatch is recorded, not fatal."""
    path = d.anchor_file or store.default_anchor_path(d.state_dir)
    try:
        store.keep_anchor(path, d.anchor_every_events)
    except AuditChainError as exc:
        # The service still runs (theatre needs it); the anchor is left as evidence.
        logger.error("audit anchor NOT kept: %s", exc)
        store.audit("audit.anchor_mismatch", owner, {"anchor": str(path), "error": str(exc)},
                    owner)


def run_daemon(
    *,
    watch: Path | None,
    config_path: Path | None = None,
    db: str | None = None,
    model_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """``marginwatch run``: load everything, run the service, return the exit code."""
    env = os.environ if environ is None else environ
    configure_logging(environ=env)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1: thread stacks to stderr
    overrides = {"daemon": {"watch_dir": watch, "db_url": db, "model_dir": model_dir}}

    def load() -> Config:
        return load_config(config_path, environ=env, overrides=overrides)

    config = load()
    d = config.daemon
    if d.watch_dir is None:
        raise DaemonError("no folder to watch: pass --watch DIR or set daemon.watch_dir")
    if not Path(d.watch_dir).is_dir():
        raise DaemonError(f"{d.watch_dir}: watch folder does not exist or is not a folder")
    if d.model_dir is None:
        from marginwatch.daemon.prediction import default_model_dir

        d.model_dir = default_model_dir()  # the bundled synthetic demo model, or a clear error
    owner = _owner()
    from marginwatch.storage import Store

    from ._stages import load_stages

    flags = SignalFlags().install()  # before the slow parts: a SIGTERM now is honoured
    notifier = Notifier.from_environ(env)
    if d.db_url is None:  # the default database lives in the configured state_dir
        try:
            Path(d.state_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DaemonError(f"daemon.state_dir={d.state_dir}: cannot create it "
                              f"({exc.strerror})") from exc
    store = Store.open(d.resolved_db_url(), upgrade=True,
                       busy_timeout_seconds=d.db_busy_timeout_seconds)
    try:
        _keep_anchor(store, d, owner)
        store.audit("config.loaded", owner, {
            "source": config.source, "config": config.model_dump(mode="json")}, owner)
        stages, infer, model_id, described = load_stages(config, store, actor=owner,
                                                            notifier=notifier)
        store.audit("daemon.start", owner, {
            "pid": os.getpid(), "observer": d.observer, **described}, owner)
        logger.info("model %s on %s (%s, %s, %d CPU inference threads)",
                    described["model_digest"][:12], described["backend"], described["device"],
                    described["precision"], described["inference_threads"])
        if flags.stop.is_set():
            logger.info("stop requested during start-up")
        service = Service(
            config, watch_dir=Path(d.watch_dir), store=store, stages=stages, infer=infer,
            model_id=model_id, owner=owner, notifier=notifier, flags=flags, reload_config=load,
            described=described,
        )
        with service:
            return service.run()
    finally:
        flags.restore()
        store.close()
        notifier.close()
