"""Images remember their inode: a renamed file is known by inode + size + mtime.

A file (or its case folder) renamed before it was read was matched to its new name by
root, size and mtime alone, so a copy with the same size and mtime could be taken for
it. ``images.inode`` (``st_ino`` when the file was seen) makes the match exact; rows
recorded before this revision have none and still match on the rest.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("inode", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_column("inode")
