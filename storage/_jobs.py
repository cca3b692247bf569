"""Job lifecycle steps that run inside a Store's writing transaction (one session).

discover -> claim -> (record_assessment | close_duplicate | fail_or_retry), and the
ways a job goes back: put_back (released), requeue_lost (lease expired, owner gone).

The ``done`` step (written as plain statements, it is on every image's path) is in
:mod:`._job_assessed`, the steps in which the file is not read (superseded, moved,
waiting for a file still changing, put back) in :mod:`._job_unread`, and the failures
(retry or fail for good, a lost lease put back) in :mod:`._job_failures`; all are
re-exported here.

Kept apart from :mod:`store` so each stays readable; nothing here commits: the caller's
``with store._write()`` block is the transaction, so a crash between any two steps leaves
all of a job's records or none of them (tests/test_storage_crash.py kills a writer
mid-transaction, at statements it picks from the outside).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from marginwatch.engine.errors import NotFoundError
from sqlalchemy import select
from sqlalchemy.orm import Session

from . import _cases, audit
from ._job_assessed import check_held, held_image_id, record_assessment
from ._job_failures import fail_final, fail_or_retry, requeue_lost
from ._job_unread import (
    _same_inode,
    close_moved,
    end_job,
    moved_to,
    put_back,
    supersede,
    wait_for_change,
)
from ._paths import path_key
from .models import Image, Job, Prediction
from .records import (
    ClaimedJob,
    Discovery,
    Placement,
)

__all__ = [
    "claim",
    "close_duplicate",
    "close_moved",
    "discover",
    "expired",
    "fail_final",
    "fail_or_retry",
    "held_image_id",
    "held_job",
    "moved_to",
    "orphaned",
    "put_back",
    "record_assessment",
    "requeue_lost",
    "supersede",
    "wait_for_change",
]

logger = logging.getLogger(__name__)

def discover(
    session: Session,
    root_key: str,
    rel_path: str,
    size: int,
    mtime_ns: int,
    actor: str,
    now: datetime,
    *,
    placement: Placement | None = None,
    inode: int | None = None,
    lease: tuple[str, datetime] | None = None,
) -> Discovery | None:
    """A new file version and its pending job (audited); None if already recorded.

    With ``placement`` the image goes into its case (see :func:`_cases.place`); with
    ``lease`` (owner, expiry) the new job is leased at once, as :func:`claim` would.
    """
    key = path_key(rel_path)
    seen = session.scalar(
        select(Image.id).where(
            Image.root_key == root_key,
            Image.path_key == key,
            Image.rel_path == rel_path,
            Image.size == size,
            Image.mtime_ns == mtime_ns,
        )
    )
    if seen is not None:
        return None
    previous = session.scalar(  # the latest earlier version of this file, if any
        select(Image.id)
        .where(Image.root_key == root_key, Image.path_key == key, Image.rel_path == rel_path)
        .order_by(Image.first_seen.desc(), Image.id.desc())
        .limit(1)
    )
    image = Image(
        root_key=root_key, rel_path=rel_path, size=size, mtime_ns=mtime_ns, first_seen=now,
        previous_id=previous, inode=inode,
    )
    session.add(image)
    session.flush()
    job = Job(image_id=image.id, state="pending", attempts=0, created_at=now, updated_at=now)
    session.add(job)
    session.flush()
    payload: dict[str, object] = {
        "job_id": job.id, "root_key": root_key, "size": size, "mtime_ns": mtime_ns
    }
    if previous is not None:  # a new version of a file seen before: linked, in the chain
        payload["previous_image_id"] = previous
    if placement is not None:
        payload["case_id"] = _cases.place(session, image, placement, actor, now)
        payload["location"] = placement.location
        payload["location_source"] = placement.source
        if placement.issue is not None:
            payload["location_issue"] = placement.issue
    # The path is in the images row (access-controlled); the audit payload and the
    # logs carry ids only.
    audit.append_event(session, "image.discovered", image.id, payload, actor, now)
    logger.info("image %s discovered (job %d)", image.id, job.id)
    if previous is not None:
        # The earlier version not yet read (still being written, or rewritten before its
        # turn) can never be: its bytes are gone. Closed, pointing here; no alert.
        waiting = session.scalar(select(Job).where(Job.image_id == previous,
                                                   Job.state == "pending"))
        if waiting is not None:
            supersede(session, waiting, image.id, actor, now)
    for gone in session.scalars(  # the same content under an old name that was not found
        select(Job).join(Image, Image.id == Job.image_id).where(
            Image.root_key == root_key, Image.rel_path != rel_path, Image.size == size,
            Image.mtime_ns == mtime_ns, _same_inode(Image.inode, inode), Job.state == "pending",
            Job.error_class == "FileNotFoundError",
        )
    ).all():
        close_moved(session, gone, image.id, actor, now)
    claimed = None if lease is None else _lease(job, image, lease[0], now, lease[1])
    return Discovery(image_id=image.id, job_id=job.id, rel_path=rel_path, claimed=claimed)


def claim(
    session: Session, owner: str, now: datetime, expires: datetime, root_key: str | None
) -> ClaimedJob | None:
    """Lease the oldest runnable pending job (of ``root_key`` if given) to ``owner``."""
    query = (
        select(Job, Image)
        .join(Image, Image.id == Job.image_id)
        .where(Job.state == "pending", (Job.not_before.is_(None)) | (Job.not_before <= now))
        .order_by(Job.id)
        .limit(1)
    )
    if root_key is not None:
        query = query.where(Image.root_key == root_key)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True, of=Job)
    row = session.execute(query).first()
    if row is None:
        return None
    job, image = row
    return _lease(job, image, owner, now, expires)


def _lease(job: Job, image: Image, owner: str, now: datetime, expires: datetime) -> ClaimedJob:
    """``pending`` -> ``processing``, leased to ``owner`` until ``expires``: one attempt."""
    job.state = "processing"
    job.attempts += 1
    job.lease_owner = owner
    job.lease_expires_at = expires
    job.started_at = now
    job.updated_at = now
    return ClaimedJob(
        job_id=job.id,
        image_id=image.id,
        root_key=image.root_key,
        rel_path=image.rel_path,
        size=image.size,
        mtime_ns=image.mtime_ns,
        attempts=job.attempts,
        lease_expires_at=expires,
    )


def expired(session: Session, now: datetime) -> list[Job]:
    """``processing`` jobs whose lease ran out before ``now``."""
    query = select(Job).where(Job.state == "processing", Job.lease_expires_at < now)
    return list(session.scalars(query.order_by(Job.id)).all())


def orphaned(session: Session, owner_prefix: str, alive: Callable[[str], bool] | None) -> list[Job]:
    """``processing`` jobs leased to an owner starting with ``owner_prefix`` that is gone."""
    held = session.scalars(select(Job).where(Job.state == "processing").order_by(Job.id)).all()
    owners = {j.lease_owner for j in held if (j.lease_owner or "").startswith(owner_prefix)}
    gone = {o for o in owners if o is not None and (alive is None or not alive(o))}
    return [j for j in held if j.lease_owner in gone]


def held_job(session: Session, job_id: int, owner: str) -> Job:
    """Job ``job_id``, which ``owner`` must hold (row locked on PostgreSQL)."""
    query = select(Job).where(Job.id == job_id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    job = session.scalar(query)
    check_held(job_id, owner, *((job.state, job.lease_owner) if job else (None, None)))
    assert job is not None
    return job


def close_duplicate(
    session: Session, job: Job, sha256: str, of_prediction_id: int, actor: str, now: datetime
) -> None:
    """The job's bytes were assessed before by the same model: link, don't rerun."""
    if session.get(Prediction, of_prediction_id) is None:
        raise NotFoundError(f"prediction {of_prediction_id}: no such prediction")
    image = session.get(Image, job.image_id)
    assert image is not None
    image.sha256 = sha256
    end_job(job, "duplicate", now)
    job.prediction_id = of_prediction_id
    audit.append_event(
        session,
        "image.duplicate",
        image.id,
        {"job_id": job.id, "sha256": sha256, "of_prediction_id": of_prediction_id},
        actor,
        now,
    )
