"""The Store's case methods (a mixin of :class:`~marginwatch.storage.Store`).

Each public method is one transaction, as everywhere in the Store; the steps inside
live in :mod:`._cases`. Kept apart so store.py stays near its size guideline.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import datetime

from marginwatch.engine.errors import ConflictError
from sqlalchemy.orm import Session

from . import _cases
from ._time import aware_utc as _aware
from .records import CaseDetail, CaseView

__all__ = ["CaseMethods"]




class CaseMethods:
    """Cases and their status; needs the Store's ``_read()`` and ``_write()``."""

    def _read(self) -> AbstractContextManager[Session]:  # pragma: no cover - the Store's
        raise NotImplementedError

    def _write(  # pragma: no cover - the Store's
        self, *, audited: bool = True
    ) -> AbstractContextManager[Session]:
        raise NotImplementedError

    def list_cases(
        self, *, open_only: bool = False, since: datetime | None = None, limit: int | None = None
    ) -> list[CaseView]:
        """Cases with status and counts, latest activity first (``marginwatch case list``)."""
        with self._read() as session:
            return _cases.case_views(
                session, open_only=open_only, since=None if since is None else _aware(since),
                limit=limit,
            )

    def case_detail(self, case: str) -> CaseDetail:
        """One case by id, id prefix or folder name; NotFoundError when there is none."""
        with self._read() as session:
            return _cases.case_detail(session, case)

    def current_case(self) -> CaseDetail | None:
        """The dashboard's case: the open one scanned last (else the last one); None if none."""
        with self._read() as session:
            case_id = _cases.current_case_id(session)
            return None if case_id is None else _cases.case_detail(session, case_id)

    def images_outside_cases(self) -> int:
        """Images recorded directly in an export root, in no case folder."""
        with self._read() as session:
            return _cases.loose_images(session)

    def close_case(
        self, case: str, by: str, note: str | None = None, *, now: datetime | None = None
    ) -> CaseView:
        """Close an open case; audited ``case.closed`` with ``by`` as actor."""
        if not by.strip():
            raise ConflictError("close: `by` must name the person closing the case")
        now = _aware(now)
        with self._write() as session:
            row = _cases.find_case(session, case)
            _cases.close(session, row, by, note, "closed", now)
            session.flush()
            return _cases.case_views_of(session, [row])[0]

    def close_idle_cases(
        self, idle_seconds: float, actor: str, *, now: datetime | None = None
    ) -> int:
        """Close open cases with no new image for ``idle_seconds`` (audited); how many."""
        now = _aware(now)
        with self._write() as session:
            return _cases.close_idle(session, idle_seconds, actor, now)
