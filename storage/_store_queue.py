"""The Store's job queue (a mixin of :class:`~marginwatch.storage.Store`).

Claiming, extending and releasing leases; putting back expired and orphaned jobs;
closing a job (an assessment, a duplicate, a move, a file still changing) or failing it.
Each public method is one transaction (the Store's ``_write()``); the steps inside live
in :mod:`._jobs`. Kept apart so store.py stays near its size guideline.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from . import _jobs, audit
from ._time import aware_utc as _now
from .records import AssessmentRecord, ClaimedJob, FailOutcome, FinishOutcome

__all__ = ["QueueMethods"]




class QueueMethods:
    """The job queue; needs the Store's ``_write()`` (a write transaction's session)."""

    def _write(  # pragma: no cover - the Store's
        self, *, audited: bool = True
    ) -> AbstractContextManager[Session]:
        raise NotImplementedError

    def claim_job(
        self,
        owner: str,
        lease_seconds: float,
        now: datetime | None = None,
        *,
        root_key: str | None = None,
    ) -> ClaimedJob | None:
        """Lease the oldest runnable pending job to ``owner``; None when there is none.

        ``root_key`` restricts the claim to one export root (several daemons, one database).
        """
        now = _now(now)
        expires = now + timedelta(seconds=lease_seconds)
        with self._write(audited=False) as session:
            return _jobs.claim(session, owner, now, expires, root_key)

    def extend_lease(
        self, job_id: int, owner: str, lease_seconds: float, now: datetime | None = None
    ) -> datetime:
        """Push a held lease forward (long jobs); ConflictError if the lease was lost."""
        now = _now(now)
        with self._write(audited=False) as session:
            job = _jobs.held_job(session, job_id, owner)
            job.lease_expires_at = now + timedelta(seconds=lease_seconds)
            job.updated_at = now
            return job.lease_expires_at

    def requeue_expired(
        self,
        now: datetime | None = None,
        *,
        max_attempts: int | None = None,
        actor: str = "marginwatch",
    ) -> int:
        """Put jobs whose lease expired back to pending; returns how many.

        With ``max_attempts``, a job that has already been claimed that many times (a
        file that kills its worker) is failed instead, with a not-assessed alert.
        """
        now = _now(now)
        with self._write() as session:
            jobs = _jobs.expired(session, now)
            for job in jobs:
                _jobs.requeue_lost(session, job, None, max_attempts, actor, now)
            return len(jobs)

    def release_job(
        self, job_id: int, owner: str, *, actor: str | None = None, now: datetime | None = None
    ) -> None:
        """Give a held job back to ``pending`` now: the claim does not count as an attempt.

        For work the daemon itself interrupts (SIGTERM before the assessment finished):
        it is not the file's fault, so no error is recorded, no delay is set and the
        attempt is not counted against ``max_attempts``. Audited ``job.released``.
        ConflictError if the lease was lost, NotFoundError for an unknown job.
        """
        now = _now(now)
        with self._write() as session:
            job = _jobs.held_job(session, job_id, owner)
            _jobs.put_back(job, now)
            job.attempts = max(0, job.attempts - 1)
            audit.append_event(
                session,
                "job.released",
                job.image_id,
                {"job_id": job.id, "attempts": job.attempts, "lease_owner": owner},
                actor or owner,
                now,
            )

    def wait_for_change(
        self,
        job_id: int,
        owner: str,
        retry_after_seconds: float,
        *,
        actor: str | None = None,
        now: datetime | None = None,
    ) -> str:
        """A held job whose file is still changing (size or mtime moved since it was
        recorded): not an attempt, no error, no alert. Returns ``"superseded"`` when a
        newer version of the file is recorded already (the job is closed, pointing to
        it), else ``"pending"`` (runnable again after ``retry_after_seconds``; the newer
        version supersedes it once the readiness tracker records it). Audited.
        ConflictError if the lease was lost, NotFoundError for an unknown job.
        """
        now = _now(now)
        with self._write() as session:
            job = _jobs.held_job(session, job_id, owner)
            return _jobs.wait_for_change(session, job, retry_after_seconds, actor or owner, now)

    def follow_move(
        self, job_id: int, owner: str, *, actor: str | None = None,
        now: datetime | None = None,
    ) -> str | None:
        """A held job whose file is not found under its name: if the same content (root,
        size, mtime) is recorded under another name, close the job as ``moved`` with a
        pointer to that image (audited, no alert) and return its id; else None and the
        job is left as it is (the caller fails or retries it).
        """
        now = _now(now)
        with self._write() as session:
            job = _jobs.held_job(session, job_id, owner)
            target = _jobs.moved_to(session, job)
            if target is not None:
                _jobs.close_moved(session, job, target, actor or owner, now)
            return target

    def requeue_orphans(
        self,
        owner_prefix: str,
        alive: Callable[[str], bool] | None = None,
        now: datetime | None = None,
        *,
        max_attempts: int | None = None,
        actor: str = "marginwatch",
    ) -> int:
        """Put back jobs leased to owners that no longer exist, without waiting for the lease.

        Candidates are ``processing`` jobs whose lease owner starts with ``owner_prefix``
        (the daemon passes its own ``marginwatch-daemon@<host>:``); ``alive(owner)`` says
        whether that owner still runs (None: none of them does). Like
        :meth:`requeue_expired` the claim still counts (the file may be what killed the
        worker), and with ``max_attempts`` a job claimed that many times fails for good.
        Audited ``job.requeued`` with ``reason: "owner-gone"``; returns how many.
        """
        now = _now(now)
        with self._write() as session:
            jobs = _jobs.orphaned(session, owner_prefix, alive)
            for job in jobs:
                _jobs.requeue_lost(session, job, "owner-gone", max_attempts, actor, now)
            return len(jobs)

    def finish_job(
        self,
        job_id: int,
        owner: str,
        result: AssessmentRecord,
        *,
        actor: str | None = None,
        now: datetime | None = None,
    ) -> FinishOutcome:
        """Record an assessment and close the job, all in ONE transaction.

        Image details, prediction, tiles, heatmap, the alert when positive, the audit
        events and ``done``: a crash anywhere leaves all of it or none of it.
        """
        now = _now(now)
        actor = actor or owner
        with self._write() as session:
            image_id = _jobs.held_image_id(session, job_id, owner)
            return _jobs.record_assessment(session, job_id, image_id, result, actor, now)

    def mark_duplicate(
        self,
        job_id: int,
        owner: str,
        sha256: str,
        of_prediction_id: int,
        *,
        actor: str | None = None,
        now: datetime | None = None,
    ) -> None:
        """Close a job whose bytes were already assessed by the same model: link, don't rerun."""
        now = _now(now)
        with self._write() as session:
            job = _jobs.held_job(session, job_id, owner)
            _jobs.close_duplicate(session, job, sha256, of_prediction_id, actor or owner, now)

    def fail_job(
        self,
        job_id: int,
        owner: str,
        error_class: str,
        message: str,
        retry_after_seconds: float | None,
        max_attempts: int,
        *,
        quality: Mapping[str, Any] | None = None,
        actor: str | None = None,
        now: datetime | None = None,
    ) -> FailOutcome:
        """Retry later (pending + not_before) or fail for good with a not-assessed alert.

        ``quality``: the gate's report of an image it stopped; it goes into the
        ``image.failed`` audit event, in the hash chain with the reason.
        """
        now = _now(now)
        actor = actor or owner
        with self._write() as session:
            job = _jobs.held_job(session, job_id, owner)
            return _jobs.fail_or_retry(
                session, job, error_class, message, retry_after_seconds, max_attempts, actor, now,
                quality=quality,
            )
