"""The processing pipeline: readers -> one inference thread -> one finisher.

::

    main loop --claim_job--> reader queue --> reader threads (``workers``)
                                                 | safe open, engine.prepare (read, check,
                                                 | plan tiles, SHA-256), early duplicate
                                                 | check, then the tiles chunk by chunk
                                                 v (blocks while the batcher is full)
                                         TileBatcher (one thread): tiles of several
                                         images per backend call; waits for company
                                         <= max_batch_wait_ms, and only when another
                                         image is queued or being read
                                                 v
                              finisher queue --> finisher thread: engine.finish (CAM,
                                                 aggregate), record (heatmap PNG encoded
                                                 here, before the transaction) and ONE
                                                 store call per job:
                                                 finish_job | mark_duplicate | fail_job

Messages to the finisher are typed: :class:`Assess` (tiles inferred, or none to infer),
:class:`Duplicate` (the reader found the same bytes assessed by the same model) and
:class:`Fail` (any error on the way). The collaborators are Protocols
(:mod:`._collaborators`): a :class:`JobStore`, the engine's :class:`Stages`, an
:data:`Infer`.

Reading and preprocessing of the next images overlap with inference of the current
batch. Tiles stream as uint8 chunks of ``max_batch_tiles`` with bounded buffering, so
memory does not grow with the size of an image; the image file is open only while its
tiles are read (the reader closes it on every path).

Duplicates are looked up once per image, by the reader (before any tile is inferred).
The finisher is the only thread that writes a job's outcome; it remembers the SHA-256s it
recorded while another job with the same bytes is still in flight, so two copies of the
same bytes in flight at once end as one assessment and one ``duplicate`` without a second
database lookup. (Daemons watching *other* folders of a shared database do not see each
other's in-flight work: the same bytes arriving in both at the same instant are assessed
by each.)

Every failure becomes a ``fail_job`` with a reason a person can act on; the store
retries it after ``retry_delay_seconds`` or, after ``max_attempts`` (or at once, for
errors that cannot heal, such as a symbolic link out of the export folder), records it
``failed`` with a not-assessed alert. Logs name images by id only. How a failure is
described (error class, advice, retry) is in :mod:`._failures`, with the pipeline's own
file errors :class:`RefusedFileError` and :class:`FileChangedError`; re-exported here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import stat as stat_module
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from marginwatch.engine.errors import (
    ConflictError,
    DatabaseUnavailableError,
    MarginwatchError,
    NotFoundError,
)

from ._collaborators import Infer, JobStore, Stages
from ._failures import (
    FileChangedError,
    RefusedFileError,
    describe_failure,
    gate_measurements,
    still_changing,
)
from .batching import TileBatcher

if TYPE_CHECKING:
    from marginwatch.engine.assessment import PreparedImage
    from marginwatch.engine.inference import Inference
    from marginwatch.storage.records import ClaimedJob

__all__ = ["Assess", "Duplicate", "Fail", "FileChangedError", "FinishMessage", "Pipeline",
           "RefusedFileError", "Settings"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclass
class Settings:
    """The pipeline's live-changeable settings (SIGHUP replaces them)."""

    max_attempts: int
    retry_delay_seconds: float


@dataclass(eq=False)
class _Work:
    job: ClaimedJob
    prepared: PreparedImage | None = None  # set by the reader once the file is planned
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, eq=False)
class Assess:
    """Record an assessment: the image's joined inference (None: it has no tiles)."""

    work: _Work
    inference: Inference | None


@dataclass(frozen=True, eq=False)
class Duplicate:
    """The same bytes were assessed by the same model before: link to that prediction."""

    work: _Work
    of_prediction_id: int


@dataclass(frozen=True, eq=False)
class Fail:
    """The job failed on the way (reading, inference, aggregation); retry or fail it."""

    work: _Work
    error: BaseException


FinishMessage = Assess | Duplicate | Fail


def resolve_inside(root_real: str, rel_path: str) -> str:
    """The path to read for ``rel_path``, refusing links that leave ``root_real``.

    A symbolic link is followed only when its target (fully resolved) lies inside the
    export folder; the target must be a regular file. Raises :class:`RefusedFileError`,
    or ``OSError`` (FileNotFoundError, PermissionError) from ``lstat``/``stat``.
    """
    path = os.path.join(root_real, rel_path)
    st = os.lstat(path)
    if stat_module.S_ISLNK(st.st_mode) or os.path.realpath(path) != path:
        real = os.path.realpath(path)
        if os.path.commonpath([real, root_real]) != root_real:
            raise RefusedFileError(
                f"{rel_path}: is a symbolic link (or lies under one) that resolves outside "
                "the export folder; refused"
            )
        path = real
        st = os.stat(path)
    if not stat_module.S_ISREG(st.st_mode):
        raise RefusedFileError(f"{rel_path}: not a regular file; refused")
    return path


def check_version(root_real: str, job: ClaimedJob) -> None:
    """Raise :class:`FileChangedError` unless the file is still the recorded version.

    Judged as the readiness tracker judges it (``lstat``: size and mtime), so a file
    rewritten after it was recorded is never assessed under the earlier version's row:
    the job waits (not an attempt) and ends ``superseded`` once the new content is
    discovered as a new version (linked to this one) and assessed on its own.
    """
    st = os.lstat(os.path.join(root_real, job.rel_path))
    if (st.st_size, st.st_mtime_ns) != (job.size, job.mtime_ns):
        raise FileChangedError(
            f"{job.rel_path}: changed after it was recorded (size {job.size} -> "
            f"{st.st_size} bytes); this version was not assessed"
        )


class Pipeline:
    """Readers, inference and finisher for claimed jobs; see the module docstring.

    ``engine`` is the model's :class:`Stages` (``prepare``, ``finish``, ``record``; the
    service binds the engine's functions to the model and configuration); ``infer``
    runs the backend; ``store`` is a :class:`JobStore`. Use as a context manager or
    ``start()``/``stop()``.
    """

    def __init__(
        self,
        *,
        store: JobStore,
        engine: Stages,
        infer: Infer,
        model_id: int,
        root: str,
        owner: str,
        settings: Settings,
        workers: int,
        max_batch_tiles: int,
        max_batch_wait_ms: float,
    ) -> None:
        self._store = store
        self._engine = engine
        self._model_id = model_id
        self._root = os.path.realpath(root)
        self._owner = owner
        self.settings = settings
        self._reader_q: queue.Queue[_Work | None] = queue.Queue()
        self._finish_q: queue.Queue[FinishMessage | None] = queue.Queue()
        self._lock = threading.Lock()
        self._in_flight: dict[int, _Work] = {}
        # SHA-256 -> prediction id, recorded by this finisher while a job with the same
        # bytes is in flight (finisher thread only; see the module docstring)
        self._recorded: dict[str, int] = {}
        self._upstream = 0  # submitted jobs not yet handed to the batcher or finisher
        self._closing = threading.Event()
        self.counts: Counter[str] = Counter()
        self._readers = [
            threading.Thread(target=self._read_loop, name=f"mw-reader-{i}", daemon=True)
            for i in range(workers)
        ]
        self._batcher = TileBatcher(
            infer,
            self._on_inferred,
            max_batch_tiles=max_batch_tiles,
            max_batch_wait_ms=max_batch_wait_ms,
            upstream=self._upstream_count,
        )
        self._finisher = threading.Thread(target=self._finish_loop, name="mw-finisher", daemon=True)

    # --- control -------------------------------------------------------------------------

    def start(self) -> None:
        for t in self._readers:
            t.start()
        self._batcher.start()
        self._finisher.start()

    def set_batching(self, max_batch_tiles: int, max_batch_wait_ms: float) -> None:
        self._batcher.max_batch_tiles = max_batch_tiles
        self._batcher.max_batch_wait_ms = max_batch_wait_ms

    def submit(self, job: ClaimedJob) -> None:
        work = _Work(job)
        with self._lock:
            self._in_flight[job.job_id] = work
            self._upstream += 1
        self._reader_q.put(work)

    def _upstream_count(self) -> int:
        with self._lock:
            return self._upstream

    def _left_reader(self) -> None:
        """A job reached the batcher or the finisher: the batcher need not wait for it."""
        with self._lock:
            self._upstream -= 1
        self._batcher.poke()

    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)

    def in_flight_jobs(self) -> list[ClaimedJob]:
        with self._lock:
            return [w.job for w in self._in_flight.values()]

    def healthy(self) -> bool:
        threads_ok = all(t.is_alive() for t in self._readers) and self._finisher.is_alive()
        return threads_ok and self._batcher.is_alive()

    def stop(self, timeout_seconds: float) -> list[ClaimedJob]:
        """Finish what is in flight within ``timeout_seconds``; return the jobs that were not.

        Intake must already have stopped (no more :meth:`submit`). The returned jobs
        are still leased to this owner: the caller releases them.
        """
        deadline = time.monotonic() + timeout_seconds
        while self.in_flight() and time.monotonic() < deadline:
            time.sleep(0.02)
        self._closing.set()
        for _ in self._readers:
            self._reader_q.put(None)
        self._batcher.stop(drain=False, timeout=max(0.1, deadline - time.monotonic()))
        self._finish_q.put(None)
        for t in (*self._readers, self._finisher):
            t.join(timeout=max(0.1, deadline - time.monotonic()))
        with self._lock:
            left = [w.job for w in self._in_flight.values()]
            self._in_flight.clear()
        return left

    def __enter__(self) -> Pipeline:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(0)

    # --- readers -------------------------------------------------------------------------

    def _read_loop(self) -> None:
        while not self._closing.is_set():
            work = self._reader_q.get()
            if work is None or self._closing.is_set():
                return
            handed_over = False
            try:
                handed_over = self._read_one(work)
            except Exception as exc:  # noqa: BLE001 - one file never costs a reader thread
                self._finish_q.put(Fail(work, exc))
            finally:
                if not handed_over:
                    self._left_reader()

    def _read_one(self, work: _Work) -> bool:
        """Prepare one job and stream its tiles; True once it reached the batcher/finisher.

        The image file is closed before this returns, on every path.
        """
        job = work.job
        try:
            path = resolve_inside(self._root, job.rel_path)
            check_version(self._root, job)
            prepared = self._engine.prepare(path)
        except Exception as exc:  # every failure is recorded by the finisher
            self._finish_q.put(Fail(work, exc))
            return False
        with prepared:  # closes the file however this ends
            work.prepared = prepared
            try:  # the one duplicate lookup for this image
                earlier = self._store.find_assessment(prepared.sha256, self._model_id)
            except Exception as exc:
                self._finish_q.put(Fail(work, exc))
                return False
            if earlier is not None:
                self._finish_q.put(Duplicate(work, earlier))
                return False
            if len(prepared.boxes) == 0:
                self._finish_q.put(Assess(work, None))
                return False
            ticket = self._batcher.open(work, len(prepared.boxes))
            self._left_reader()
            chunks = prepared.iter_tiles(max(1, self._batcher.max_batch_tiles))
            try:
                for chunk in chunks:
                    if not self._batcher.feed(ticket, chunk):
                        break  # failed in an earlier batch (reported), or stopping
            except Exception as exc:  # a read error part-way through the image
                if self._batcher.cancel(ticket):
                    self._finish_q.put(Fail(work, exc))
                return True
            finally:
                chunks.close()
            # the gate's overview measures, beside the forward pass instead of before it
            # (the finisher takes them itself if this fails, and reports the error)
            with contextlib.suppress(Exception):
                prepared.measure_quality()
            return True

    def _on_inferred(
        self, work: _Work, inference: Inference | None, exc: BaseException | None
    ) -> None:
        self._finish_q.put(Assess(work, inference) if exc is None else Fail(work, exc))

    # --- finisher ------------------------------------------------------------------------

    def _finish_loop(self) -> None:
        while True:
            message = self._finish_q.get()
            if message is None:
                return
            job = message.work.job
            try:
                self._finish_one(message)
            except (ConflictError, NotFoundError) as exc:
                # The lease was lost (expired and taken by another worker): not ours now.
                logger.warning("job %d image %s: outcome not recorded: %s",
                               job.job_id, job.image_id, type(exc).__name__)
                self.counts["lost"] += 1
            except Exception as exc:  # the database failed: the lease will expire, retried
                # (the message is not logged: SQL errors carry parameters, i.e. the path)
                logger.error("job %d image %s: recording the outcome failed: %s",
                             job.job_id, job.image_id, type(exc).__name__)
                self.counts["unrecorded"] += 1
            finally:
                with self._lock:
                    self._in_flight.pop(job.job_id, None)
                    held = {w.prepared.sha256 for w in self._in_flight.values()
                            if w.prepared is not None}
                for sha in [s for s in self._recorded if s not in held]:
                    del self._recorded[sha]

    def _finish_one(self, message: FinishMessage) -> None:
        if isinstance(message, Fail):
            self._record_failure(message.work, message.error)
            return
        work = message.work
        assert work.prepared is not None  # Assess and Duplicate come after prepare
        sha = work.prepared.sha256
        if isinstance(message, Duplicate):
            self._record_duplicate(work, sha, message.of_prediction_id)
            return
        earlier = self._recorded.get(sha)  # a copy in flight beside this one, recorded first
        if earlier is not None:
            self._record_duplicate(work, sha, earlier)
            return
        try:
            record = self._engine.record(self._engine.finish(work.prepared, message.inference))
        except Exception as exc:
            self._record_failure(work, exc)
            return
        job = work.job
        outcome = self._durably(self._store.finish_job, job.job_id, self._owner, record)
        self._recorded[sha] = outcome.prediction_id
        self.counts["assessed"] += 1
        logger.info(
            "image %s: assessed p=%.3f decision=%s alert=%s in %.2fs",
            job.image_id, record.probability, "positive" if record.decision else "negative",
            outcome.alert_id, time.monotonic() - work.started,
        )

    def _durably(self, call: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """``call(*args, **kwargs)``, again and again while the database is unavailable (read-only,
        full, restarting, locked): the outcome is recorded once it heals, the attempt
        not spent. Gives up (raises) only when the pipeline is stopping."""
        delay = 0.2
        while True:
            try:
                return call(*args, **kwargs)
            except DatabaseUnavailableError as exc:
                if self._closing.is_set():
                    raise
                logger.warning("database unavailable (%s); recording again in %.1fs",
                               type(exc).__name__, delay)
                if self._closing.wait(delay):
                    raise
                delay = min(5.0, delay * 2)

    def _record_duplicate(self, work: _Work, sha: str, of_prediction_id: int) -> None:
        self._durably(self._store.mark_duplicate, work.job.job_id, self._owner, sha,
                      of_prediction_id)
        self.counts["duplicate"] += 1
        logger.info("image %s: duplicate of prediction %s", work.job.image_id, of_prediction_id)

    def _record_failure(self, work: _Work, exc: BaseException) -> None:
        job = work.job
        if isinstance(exc, DatabaseUnavailableError):
            # Not the file's fault (e.g. the duplicate lookup met a database fault): the
            # job goes back to pending, the attempt not counted.
            self._durably(self._store.release_job, job.job_id, self._owner)
            self.counts["released"] += 1
            logger.warning("image %s: put back, the database was unavailable", job.image_id)
            return
        if isinstance(exc, FileChangedError) or still_changing(self._root, job):
            # Being written (a decode failure on a growing file) or rewritten: not the
            # file's fault and not an attempt; the settled version is assessed.
            state = self._durably(self._store.wait_for_change, job.job_id, self._owner,
                                  self.settings.retry_delay_seconds)
            self.counts["waiting" if state == "pending" else "superseded"] += 1
            logger.info("image %s: file still changing; %s", job.image_id,
                        "waits" if state == "pending" else "superseded by its newer version")
            return
        if isinstance(exc, FileNotFoundError) or isinstance(exc.__cause__, FileNotFoundError):
            # renamed or moved away (the file, or its case folder): followed to the same
            # content recorded under its new name, never failed with an alert
            target = self._durably(self._store.follow_move, job.job_id, self._owner)
            if target is not None:
                self.counts["moved"] += 1
                logger.info("image %s: moved; assessed as image %s", job.image_id, target)
                return
        abs_path = os.path.join(self._root, job.rel_path)
        error_class, message, retry = describe_failure(exc, abs_path, job.rel_path)
        outcome = self._durably(
            self._store.fail_job,
            job.job_id,
            self._owner,
            error_class,
            message,
            self.settings.retry_delay_seconds if retry else None,
            self.settings.max_attempts,
            quality=gate_measurements(exc),
        )
        state = outcome.state
        self.counts["failed" if state == "failed" else "retry"] += 1
        if not isinstance(exc, (MarginwatchError, OSError)):
            frame = traceback.extract_tb(exc.__traceback__)[-1:]
            where = f"{frame[0].filename}:{frame[0].lineno}" if frame else "?"
            logger.error("image %s: unexpected %s at %s", job.image_id, error_class, where)
        logger.warning("image %s: %s (%s, attempt %d)", job.image_id, error_class,
                       "failed" if state == "failed" else "will retry", job.attempts)
