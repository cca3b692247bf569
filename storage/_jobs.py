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
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from marginwatch.engine.errors import NotFoundError
from sqlalchemy import Select, bindparam, insert, select
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
from .models import Base, Image, Job, Prediction
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

_images, _jobs = Base.metadata.tables["images"], Base.metadata.tables["jobs"]
_SEEN = select(_images.c.id).where(
    _images.c.root_key == bindparam("root_key"), _images.c.path_key == bindparam("path_key"),
    _images.c.rel_path == bindparam("rel_path"), _images.c.size == bindparam("size"),
    _images.c.mtime_ns == bindparam("mtime_ns"))
_LATEST = (  # the latest earlier version of a file, if any
    select(_images.c.id)
    .where(_images.c.root_key == bindparam("root_key"),
           _images.c.path_key == bindparam("path_key"),
           _images.c.rel_path == bindparam("rel_path"))
    .order_by(_images.c.first_seen.desc(), _images.c.id.desc())
    .limit(1)
)
_INSERT_IMAGE = insert(_images)
_INSERT_JOB = insert(_jobs).returning(_jobs.c.id)
_WAITING = select(_jobs.c.id).where(_jobs.c.image_id == bindparam("image_id"),
                                    _jobs.c.state == "pending")


def _lost_under_other_names(with_inode: bool) -> Select[int]:
    """Pending jobs whose file was not found, with this content under another name
    (the same inode too, when the new file's is known: see :func:`_same_inode`)."""
    inode = _same_inode(_images.c.inode, bindparam("inode") if with_inode else None)
    return select(_jobs.c.id).join(_images, _images.c.id == _jobs.c.image_id).where(
        _images.c.root_key == bindparam("root_key"), _images.c.rel_path != bindparam("rel_path"),
        _images.c.size == bindparam("size"), _images.c.mtime_ns == bindparam("mtime_ns"),
        inode, _jobs.c.state == "pending", _jobs.c.error_class == "FileNotFoundError",
    ).order_by(_jobs.c.id)


_LOST = {True: _lost_under_other_names(True), False: _lost_under_other_names(False)}


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

    On every file's path from event to alert, so the common steps are prepared
    statements (as in :mod:`._job_assessed`); a file's earlier version still waiting,
    or its content left under an old name, are closed through the ORM (rare).
    """
    db = session.connection()
    file = {"root_key": root_key, "path_key": path_key(rel_path), "rel_path": rel_path,
            "size": size, "mtime_ns": mtime_ns}
    if db.execute(_SEEN, file).first() is not None:
        return None
    previous = db.execute(_LATEST, file).scalar()
    image_id = str(uuid.uuid4())
    image = {**file, "id": image_id, "inode": inode, "first_seen": now, "previous_id": previous}
    payload: dict[str, object] = {"root_key": root_key, "size": size, "mtime_ns": mtime_ns}
    if previous is not None:  # a new version of a file seen before: linked, in the chain
        payload["previous_image_id"] = previous
    if placement is not None:
        image["case_id"] = payload["case_id"] = _cases.place(session, image_id, root_key,
                                                             placement, actor, now)
        image["location"] = payload["location"] = placement.location
        image["location_source"] = payload["location_source"] = placement.source
        image["location_issue"] = placement.issue
        if placement.issue is not None:
            payload["location_issue"] = placement.issue
    db.execute(_INSERT_IMAGE, image)  # a new case is in: place() flushed it
    job: dict[str, Any] = {"image_id": image_id, "state": "pending", "attempts": 0,
                           "created_at": now, "updated_at": now}
    if lease is not None:  # leased in the same transaction, as claim() would
        job.update(state="processing", attempts=1, lease_owner=lease[0],
                   lease_expires_at=lease[1], started_at=now)
    job["id"] = db.execute(_INSERT_JOB, job).scalar_one()
    # The path is in the images row (access-controlled); the audit payload and the
    # logs carry ids only.
    audit.append_event(session, "image.discovered", image_id, {"job_id": job["id"], **payload},
                       actor, now)
    logger.info("image %s discovered (job %d)", image_id, job["id"])
    if previous is not None:
        # The earlier version not yet read (still being written, or rewritten before its
        # turn) can never be: its bytes are gone. Closed, pointing here; no alert.
        for waiting in db.execute(_WAITING, {"image_id": previous}).scalars().all():
            supersede(session, _job(session, waiting), image_id, actor, now)
    for gone in db.execute(_LOST[inode is not None], {**file, "inode": inode}).scalars().all():
        close_moved(session, _job(session, gone), image_id, actor, now)
    claimed = None
    if lease is not None:
        claimed = ClaimedJob(job_id=job["id"], image_id=image_id, root_key=root_key,
                             rel_path=rel_path, size=size, mtime_ns=mtime_ns, attempts=1,
                             lease_expires_at=lease[1])
    return Discovery(image_id=image_id, job_id=job["id"], rel_path=rel_path, claimed=claimed)


def _job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    assert job is not None  # just selected, inside this transaction
    return job


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
