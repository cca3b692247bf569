"""Cases (specimens) and margin locations, inside a Store's transaction (one session).

place -> (the image is assessed) -> status per location and per case; close (by a
person, or idle) and reopen (a late image). Nothing here commits: the caller's
``with store._write()`` / ``_read()`` block is the transaction.

An image's state in its case is the worst that applies, in the order of
:data:`~marginwatch.storage.records.CASE_IMAGE_STATES`: ``tumour`` (an assessment at or
above its threshold), ``not-assessable`` (failed, or a not-assessed alert), ``pending``
(queued, or being read), ``clear``. A location takes the worst state of its images, a
case the worst of its locations.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime, timedelta

from marginwatch.engine.errors import ConflictError, NotFoundError
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from . import audit
from .models import Alert, AuditEvent, Case, Image, Job, ModelRow, Prediction
from .records import (
    CASE_IMAGE_STATES,
    CaseDetail,
    CaseImage,
    CaseView,
    LocationStatus,
    Placement,
)

__all__ = [
    "case_detail",
    "case_views",
    "case_views_of",
    "close",
    "close_idle",
    "current_case_id",
    "find_case",
    "loose_images",
    "place",
    "worst",
]

logger = logging.getLogger(__name__)

_RANK = {state: i for i, state in enumerate(CASE_IMAGE_STATES)}


def worst(states: list[str]) -> str:
    """The worst of ``states`` by :data:`CASE_IMAGE_STATES`; "empty" for none."""
    return min(states, key=_RANK.__getitem__) if states else "empty"


def place(
    session: Session, image_id: str, root_key: str, placement: Placement, actor: str,
    now: datetime,
) -> str | None:
    """The case of a new image (created, or reopened when closed); None without a case folder.

    Audited: ``case.opened`` for a new case, ``case.reopened`` for a late image of a
    closed one (the image's own ``image.discovered`` names the case and location). The
    caller records the image with this case id and the placement's location.
    """
    if placement.case_folder is None:
        return None
    case = session.scalar(
        select(Case).where(Case.root_key == root_key, Case.folder == placement.case_folder)
    )
    if case is None:
        case = Case(
            root_key=root_key, folder=placement.case_folder, state="open", opened_at=now,
            last_image_at=now, reopened=0,
        )
        session.add(case)
        session.flush()
        audit.append_event(session, "case.opened", case.id, {"image_id": image_id}, actor, now)
        logger.info("case %s opened (image %s)", case.id, image_id)
    elif case.state == "closed":
        previous = {"close_reason": case.close_reason, "closed_by": case.closed_by,
                    "closed_at": case.closed_at.isoformat() if case.closed_at else None}
        case.state = "open"
        case.reopened += 1
        case.closed_at = case.closed_by = case.close_reason = case.close_note = None
        audit.append_event(session, "case.reopened", case.id,
                           {"image_id": image_id, "reason": "late image", **previous}, actor, now)
        logger.warning("case %s reopened by a late image %s", case.id, image_id)
    case.last_image_at = max(case.last_image_at, now)
    return case.id


def close(
    session: Session, case: Case, by: str, note: str | None, reason: str, now: datetime
) -> None:
    """Close an open case (ConflictError if it is closed already); audited ``case.closed``."""
    if case.state == "closed":
        when = case.closed_at.isoformat(timespec="seconds") if case.closed_at else "?"
        raise ConflictError(
            f"case {case.id}: already closed ({case.close_reason}) by {case.closed_by} at {when}"
        )
    case.state = "closed"
    case.closed_at, case.closed_by, case.close_reason, case.close_note = now, by, reason, note
    audit.append_event(session, "case.closed", case.id, {"reason": reason, "note": note}, by, now)
    logger.info("case %s closed (%s)", case.id, reason)


def close_idle(session: Session, idle_seconds: float, actor: str, now: datetime) -> int:
    """Close every open case with no new image for ``idle_seconds``; how many."""
    cutoff = now - timedelta(seconds=idle_seconds)
    idle = session.scalars(
        select(Case).where(Case.state == "open", Case.last_image_at < cutoff).order_by(Case.id)
    ).all()
    for case in idle:
        close(session, case, actor, f"no new image for {idle_seconds:g} s", "idle", now)
    return len(idle)


def find_case(session: Session, key: str) -> Case:
    """A case by id, unique id prefix (>= 4 characters) or exact folder name."""
    case = session.get(Case, key)
    if case is not None:
        return case
    found = list(session.scalars(select(Case).where(Case.folder == key)).all())
    if not found and len(key) >= 4:
        found = list(session.scalars(select(Case).where(Case.id.startswith(key))).all())
    if len(found) == 1:
        return found[0]
    if found:
        raise ConflictError(
            f"case {key!r}: {len(found)} cases match (in several export folders); "
            "give the case id from `marginwatch case list`"
        )
    raise NotFoundError(f"case {key!r}: no such case (see `marginwatch case list`)")


def current_case_id(session: Session) -> str | None:
    """The case the theatre is on: the open case with the latest image, else the latest."""
    return session.scalar(
        select(Case.id).order_by((Case.state == "open").desc(), Case.last_image_at.desc()).limit(1)
    )


def _case_images(session: Session, case_ids: list[str]) -> dict[str, list[CaseImage]]:
    out: dict[str, list[CaseImage]] = defaultdict(list)
    if not case_ids:
        return out
    not_assessed = (
        select(Alert.image_id).where(Alert.kind == "not-assessed").distinct().scalar_subquery()
    )
    query = (
        select(Image, Job, Prediction, ModelRow.digest, Image.id.in_(not_assessed))
        .join(Job, Job.image_id == Image.id)
        .outerjoin(Prediction, Prediction.id == Job.prediction_id)
        .outerjoin(ModelRow, ModelRow.id == Prediction.model_id)
        # a superseded or moved version was never read; its newer version / new name
        # stands for the file
        .where(Image.case_id.in_(case_ids), Job.state.not_in(("superseded", "moved")))
        .order_by(Image.first_seen, Job.id)
    )
    for image, job, prediction, digest, flagged in session.execute(query):
        assert image.case_id is not None  # selected by case
        out[image.case_id].append(_case_image(image, job, prediction, digest, bool(flagged)))
    return out


def _image_state(job_state: str, prediction: Prediction | None, flagged: bool) -> str:
    if prediction is not None and prediction.decision and job_state in ("done", "duplicate"):
        return "tumour"
    if job_state == "failed" or flagged:
        return "not-assessable"
    if job_state in ("pending", "processing") or prediction is None:
        return "pending"
    return "clear"


def _case_image(
    image: Image, job: Job, prediction: Prediction | None, digest: str | None, flagged: bool
) -> CaseImage:
    return CaseImage(
        image_id=image.id,
        rel_path=image.rel_path,
        location=image.location or "unspecified",
        location_source=image.location_source,
        location_issue=image.location_issue,
        first_seen=image.first_seen,
        state=_image_state(job.state, prediction, flagged),
        job_state=job.state,
        prediction_id=None if prediction is None else prediction.id,
        probability=None if prediction is None else prediction.probability,
        threshold=None if prediction is None else prediction.threshold,
        decision=None if prediction is None else prediction.decision,
        model_digest=digest,
        error_message=job.error_message,
    )


def _view(case: Case, images: list[CaseImage]) -> CaseView:
    by_location: dict[str, list[CaseImage]] = defaultdict(list)
    for item in images:
        by_location[item.location].append(item)
    locations = tuple(
        LocationStatus(
            location=name,
            state=worst([i.state for i in group]),
            images=len(group),
            max_probability=max((i.probability for i in group if i.probability is not None),
                                default=None),
            last_scan_at=max(i.first_seen for i in group),
        )
        for name, group in sorted(by_location.items())
    )
    counts = {state: sum(1 for i in images if i.state == state) for state in CASE_IMAGE_STATES}
    return CaseView(
        case_id=case.id, root_key=case.root_key, folder=case.folder, state=case.state,
        status=worst([i.state for i in images]), counts=counts, locations=locations,
        images=len(images), issues=sum(1 for i in images if i.location_issue),
        opened_at=case.opened_at, last_image_at=case.last_image_at, closed_at=case.closed_at,
        closed_by=case.closed_by, close_reason=case.close_reason, close_note=case.close_note,
        reopened=case.reopened,
    )


def case_views(
    session: Session, *, open_only: bool = False, since: datetime | None = None,
    limit: int | None = None,
) -> list[CaseView]:
    """Cases, latest activity first; ``since`` keeps those with an image since then."""
    query = select(Case).order_by(Case.last_image_at.desc(), Case.id)
    if open_only:
        query = query.where(Case.state == "open")
    if since is not None:
        query = query.where(or_(Case.last_image_at >= since, Case.opened_at >= since))
    if limit is not None:
        query = query.limit(limit)
    return case_views_of(session, list(session.scalars(query).all()))


def case_views_of(session: Session, cases: list[Case]) -> list[CaseView]:
    images = _case_images(session, [c.id for c in cases])
    return [_view(c, images.get(c.id, [])) for c in cases]


def case_detail(session: Session, key: str) -> CaseDetail:
    case = find_case(session, key)
    images = _case_images(session, [case.id]).get(case.id, [])
    events = session.scalars(
        select(AuditEvent).where(AuditEvent.object_id == case.id).order_by(AuditEvent.seq)
    ).all()
    return CaseDetail(
        case=_view(case, images), images=tuple(images),
        events=tuple(audit.to_view(e) for e in events),
    )


def loose_images(session: Session) -> int:
    """Images recorded in no case (directly in an export root)."""
    return session.scalar(select(func.count(Image.id)).where(Image.case_id.is_(None))) or 0
