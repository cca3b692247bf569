"""Job steps in which the job's file is not read, inside a Store's writing transaction.

A job whose file another image now holds is closed without an attempt or an alert:
``superseded`` by a newer version of the file (:func:`supersede`; :func:`wait_for_change`
when the held file is still changing) or ``moved`` to a new name (:func:`moved_to`,
:func:`close_moved`); :func:`put_back` returns a held job to ``pending`` unread.
:func:`end_job` is the one way every module ends a job (done, duplicate, failed,
superseded, moved).

Split out of :mod:`._jobs` (which re-exports these names for the Store); nothing here
commits, the caller's ``with store._write()`` block is the transaction.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import BindParameter, or_, select, true
from sqlalchemy.orm import Session

from . import audit
from .models import Image, Job

__all__ = ["close_moved", "moved_to", "put_back", "supersede", "wait_for_change"]

logger = logging.getLogger(__name__)


def _close_unread(
    session: Session, job: Job, state: str, event: str, other: dict[str, str],
    actor: str, now: datetime,
) -> None:
    """End a job whose file was never read because another image holds its content
    (``superseded`` by a newer version, or ``moved`` to a new name): no attempt, no alert."""
    end_job(job, state, now)
    audit.append_event(
        session, event, job.image_id, {"job_id": job.id, "attempts": job.attempts, **other},
        actor, now,
    )
    logger.info("image %s %s: see image %s (job %d)", job.image_id, state,
                next(iter(other.values())), job.id)


def supersede(session: Session, job: Job, newer_image_id: str, actor: str, now: datetime) -> None:
    """Close a job whose file changed before it was read: the newer version is assessed."""
    _close_unread(session, job, "superseded", "image.superseded",
                  {"newer_image_id": newer_image_id}, actor, now)


def wait_for_change(
    session: Session, job: Job, retry_after_seconds: float, actor: str, now: datetime
) -> str:
    """The held job's file is still changing: not an attempt. ``superseded`` if a newer
    version of the file is recorded already, else back to ``pending`` after a delay (the
    newer version, once the readiness tracker records it, supersedes it)."""
    image = session.get(Image, job.image_id)
    assert image is not None  # foreign key
    newer = session.scalar(
        select(Image.id).where(Image.previous_id == image.id).order_by(Image.id).limit(1)
    )
    if newer is not None:
        supersede(session, job, newer, actor, now)
        return "superseded"
    put_back(job, now)
    job.attempts = max(0, job.attempts - 1)
    job.not_before = now + timedelta(seconds=retry_after_seconds)
    audit.append_event(
        session,
        "job.released",
        job.image_id,
        {"job_id": job.id, "attempts": job.attempts, "reason": "file still changing",
         "not_before": job.not_before.isoformat()},
        actor,
        now,
    )
    return "pending"


def _same_inode(column: Any, inode: int | BindParameter[int] | None) -> Any:
    """The inode matches when both sides know it (a rename keeps it; a copy with the same
    size and mtime does not); rows recorded before inodes were (0011) match on the rest."""
    if inode is None:
        return true()
    return or_(column.is_(None), column == inode)


def moved_to(session: Session, job: Job) -> str | None:
    """The image recorded with this job's content (root, size, mtime, inode) under
    another name: where the file went when it is not found under its own; None if none."""
    image = session.get(Image, job.image_id)
    assert image is not None  # foreign key
    return session.scalar(
        select(Image.id).where(
            Image.root_key == image.root_key, Image.rel_path != image.rel_path,
            Image.size == image.size, Image.mtime_ns == image.mtime_ns,
            _same_inode(Image.inode, image.inode),
        ).order_by(Image.first_seen.desc(), Image.id.desc()).limit(1)
    )


def close_moved(session: Session, job: Job, new_image_id: str, actor: str, now: datetime) -> None:
    """Close a job whose file was renamed before it was read: assessed under its new name."""
    _close_unread(session, job, "moved", "image.moved", {"new_image_id": new_image_id}, actor,
                  now)


def ended(state: str, now: datetime) -> dict[str, Any]:
    """A job's columns in the final ``state``: lease and retry time dropped, finished ``now``."""
    return {"state": state, "lease_owner": None, "lease_expires_at": None, "not_before": None,
            "finished_at": now, "updated_at": now}


def end_job(job: Job, state: str, now: datetime) -> None:
    """Put ``job`` in the final ``state`` (:func:`ended`)."""
    for column, value in ended(state, now).items():
        setattr(job, column, value)


def put_back(job: Job, now: datetime) -> None:
    """``processing`` -> ``pending``, runnable at once, lease dropped."""
    job.state = "pending"
    job.lease_owner = None
    job.lease_expires_at = None
    job.not_before = None
    job.updated_at = now
