"""Image versions: a changed file is a new version linked to the one before.

Adds ``images.previous_id`` (the earlier version of the same root + path) and links the
versions already recorded, oldest first, so no history is lost.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_LINK = """
UPDATE images SET previous_id = (
    SELECT earlier.id FROM images AS earlier
    WHERE earlier.root_key = images.root_key AND earlier.rel_path = images.rel_path
      AND (earlier.first_seen < images.first_seen
           OR (earlier.first_seen = images.first_seen AND earlier.id < images.id))
    ORDER BY earlier.first_seen DESC, earlier.id DESC
    LIMIT 1
)
"""


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("previous_id", sa.String(length=36), nullable=True))
        batch.create_index(batch.f("ix_images_previous_id"), ["previous_id"])
        batch.create_foreign_key(
            batch.f("fk_images_previous_id_images"), "images", ["previous_id"], ["id"]
        )
    op.execute(_LINK)


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_constraint(batch.f("fk_images_previous_id_images"), type_="foreignkey")
        batch.drop_index(batch.f("ix_images_previous_id"))
        batch.drop_column("previous_id")
