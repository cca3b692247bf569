"""File paths of any length: ``images.rel_path`` unbounded, unique by its SHA-256.

``rel_path`` was ``VARCHAR(1000)``, and its unique constraint indexed the path itself:
a longer path (PATH_MAX is 4096 bytes, up to three times that once a non-UTF-8 name is
percent-encoded) was refused by the database, and even inside 1000 characters a
PostgreSQL B-tree entry may not pass 2704 bytes. The image then had no row at all, only
a log line. Now ``rel_path`` has no length limit and the new ``path_key`` column (the
SHA-256 hex of the stored path text, ``storage/_paths.path_key``) stands in for it in
the unique constraint and the lookups. Existing rows get their key here.

Downgrade restores ``VARCHAR(1000)`` and the old constraint; on PostgreSQL it fails if
a path longer than 1000 characters was recorded meanwhile (nothing is truncated).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD_UNIQUE = "uq_images_root_key_rel_path_size_mtime_ns"
_NEW_UNIQUE = "uq_images_root_key_path_key_size_mtime_ns"


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("path_key", sa.String(length=64), nullable=True))
    bind = op.get_bind()
    images = sa.table("images", sa.column("id", sa.String), sa.column("rel_path", sa.String),
                      sa.column("path_key", sa.String))
    # the stored text (already in encode_path's form) is what the key hashes
    rows = bind.execute(sa.select(images.c.id, images.c.rel_path)).all()
    for image_id, stored in rows:
        key = hashlib.sha256(stored.encode("utf-8")).hexdigest()
        bind.execute(images.update().where(images.c.id == image_id).values(path_key=key))
    with op.batch_alter_table("images") as batch:
        batch.alter_column("path_key", existing_type=sa.String(length=64), nullable=False)
        batch.alter_column("rel_path", existing_type=sa.String(length=1000), type_=sa.String(),
                           existing_nullable=False)
        batch.drop_constraint(_OLD_UNIQUE, type_="unique")
        batch.create_unique_constraint(_NEW_UNIQUE, ["root_key", "path_key", "size", "mtime_ns"])


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_constraint(_NEW_UNIQUE, type_="unique")
        batch.alter_column("rel_path", existing_type=sa.String(), type_=sa.String(length=1000),
                           existing_nullable=False)
        batch.create_unique_constraint(_OLD_UNIQUE, ["root_key", "rel_path", "size", "mtime_ns"])
        batch.drop_column("path_key")
