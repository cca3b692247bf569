"""Jobs may end ``moved``: the file (or its case folder) was renamed before it was read.

The same content (same root, size and mtime) recorded under its new name is assessed
there; the old name's job is closed as ``moved`` (audited ``image.moved`` with a pointer
to the new image), not failed with a not-assessed alert. Widens the jobs state check
constraint. The older schema has no such state: the downgrade puts moved jobs back to
``pending`` (the older code then judges them as it used to; the audit event stays).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD = "state IN ('pending', 'processing', 'done', 'duplicate', 'failed', 'superseded')"
_NEW = ("state IN ('pending', 'processing', 'done', 'duplicate', 'failed', 'superseded', "
        "'moved')")


def _replace(check: str) -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(batch.f("ck_jobs_state"), type_="check")
        batch.create_check_constraint(batch.f("ck_jobs_state"), check)


def upgrade() -> None:
    _replace(_NEW)


def downgrade() -> None:
    op.execute(sa.text("UPDATE jobs SET state = 'pending', finished_at = NULL "
                       "WHERE state = 'moved'"))
    _replace(_OLD)
