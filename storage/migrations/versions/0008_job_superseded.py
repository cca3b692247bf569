"""Jobs may end ``superseded``: the file changed before it was read; a newer version is.

A job whose file was still being written (or rewritten) when it was read is not failed
with a not-assessed alert any more: the newer version of the same path is recorded as
its own image and assessed, and the older version's job is closed as ``superseded``
(audited ``image.superseded`` with a pointer to the newer image). Widens the jobs state
check constraint. The older schema has no such state: the downgrade puts superseded
jobs back to ``pending`` (the older code then judges them as it used to; the audit
event stays).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD = "state IN ('pending', 'processing', 'done', 'duplicate', 'failed')"
_NEW = "state IN ('pending', 'processing', 'done', 'duplicate', 'failed', 'superseded')"


def _replace(check: str) -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(batch.f("ck_jobs_state"), type_="check")
        batch.create_check_constraint(batch.f("ck_jobs_state"), check)


def upgrade() -> None:
    _replace(_NEW)


def downgrade() -> None:
    op.execute(sa.text("UPDATE jobs SET state = 'pending', finished_at = NULL "
                       "WHERE state = 'superseded'"))
    _replace(_OLD)
