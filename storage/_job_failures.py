"""Failure steps of a job, inside a Store's writing transaction: retry, fail, requeue.

``fail_or_retry``: a retryable error with attempts left puts the job back pending until
``not_before``; otherwise ``fail_final`` ends it ``failed`` with a not-assessed alert
and ``image.failed`` (with the quality gate's measurements when the gate stopped it).
``requeue_lost``: a lease that expired or whose owner is gone goes back, or fails once
the attempts are spent. Like :mod:`._jobs` (which re-exports these), nothing here
commits.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from marginwatch.engine.pathnames import display_path
from sqlalchemy.orm import Session

from . import _digests, audit
from ._job_unread import end_job, put_back
from .models import Alert, Job
from .records import FailOutcome

__all__ = ["fail_final", "fail_or_retry", "requeue_lost"]

logger = logging.getLogger(__name__)


def fail_or_retry(
    session: Session,
    job: Job,
    error_class: str,
    message: str,
    retry_after_seconds: float | None,
    max_attempts: int,
    actor: str,
    now: datetime,
    *,
    quality: Mapping[str, Any] | None = None,
) -> FailOutcome:
    """Retry later (pending + not_before) or fail for good with a not-assessed alert."""
    message = display_path(message)  # a name in it may hold any bytes: one printable line
    job.error_class = error_class
    job.error_message = message
    job.lease_owner = None
    job.lease_expires_at = None
    job.updated_at = now
    if retry_after_seconds is not None and job.attempts < max_attempts:
        job.state = "pending"
        job.not_before = now + timedelta(seconds=retry_after_seconds)
        audit.append_event(
            session,
            "job.retry_scheduled",
            job.image_id,
            {
                "job_id": job.id,
                "attempts": job.attempts,
                "error_class": error_class,
                "not_before": job.not_before.isoformat(),
            },
            actor,
            now,
        )
        return FailOutcome(
            state="pending", attempts=job.attempts, not_before=job.not_before, alert_id=None
        )
    alert_id = fail_final(session, job, error_class, message, actor, now, quality=quality)
    return FailOutcome(state="failed", attempts=job.attempts, not_before=None, alert_id=alert_id)


def fail_final(
    session: Session,
    job: Job,
    error_class: str,
    message: str,
    actor: str,
    now: datetime,
    *,
    quality: Mapping[str, Any] | None = None,
) -> int:
    """Fail ``job`` for good: a not-assessed alert and ``image.failed`` (audited), with the
    quality gate's measurements when the gate stopped it."""
    message = display_path(message)
    end_job(job, "failed", now)
    job.error_class = error_class
    job.error_message = message
    alert = Alert(
        kind="not-assessed",
        image_id=job.image_id,
        job_id=job.id,
        raised_at=now,
        message=f"NOT ASSESSED ({error_class}): {message}",
    )
    session.add(alert)
    session.flush()
    audit.append_event(
        session,
        "image.failed",
        job.image_id,
        {
            "job_id": job.id,
            "attempts": job.attempts,
            "error_class": error_class,
            "message": message,
            **({} if quality is None else {"quality": audit.json_finite(quality)}),
        },
        actor,
        now,
    )
    audit.append_event(
        session,
        "alert.raised",
        job.image_id,
        {"alert_id": alert.id, "kind": "not-assessed", "job_id": job.id,
         "digests": _digests.alert_digests(alert)},
        actor,
        now,
    )
    logger.warning(
        "image %s not assessed after %d attempts (%s)", job.image_id, job.attempts, error_class
    )
    return alert.id


def requeue_lost(
    session: Session,
    job: Job,
    reason: str | None,
    max_attempts: int | None,
    actor: str,
    now: datetime,
) -> None:
    """A job whose worker is gone (lease expired, or owner process gone) goes back.

    The claim still counts: after ``max_attempts`` claims (a file that kills its worker)
    it fails for good with a not-assessed alert instead. Audited ``job.requeued``.
    """
    if max_attempts is not None and job.attempts >= max_attempts:
        what = "worker lease expired" if reason is None else f"worker gone ({reason})"
        fail_final(session, job, "LeaseExpired", f"{what} {job.attempts} times", actor, now)
        return
    previous = job.lease_owner
    put_back(job, now)
    payload: dict[str, object] = {
        "job_id": job.id,
        "attempts": job.attempts,
        "lease_owner": previous,
    }
    if reason is not None:
        payload["reason"] = reason
    audit.append_event(session, "job.requeued", job.image_id, payload, actor, now)
