"""Cases and margin locations: a ``cases`` table, and each image's case and location.

Existing images keep every row and value. Each is placed in the case named by the
first folder of its path (an image directly in the export root stays in no case), with
location ``unspecified`` (``location_source`` "migrated"). The cases this creates are
closed (``close_reason`` "migrated", at their last image's time): they were recorded
before cases existed, and a late image reopens one as it would any closed case.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 14:10:00
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op
from marginwatch.storage._paths import decode_path, encode_path

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cases",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("root_key", sa.String(length=200), nullable=False),
        sa.Column("folder", sa.String(length=1000), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_image_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("closed_by", sa.String(length=200), nullable=True),
        sa.Column("close_reason", sa.String(length=20), nullable=True),
        sa.Column("close_note", sa.Text(), nullable=True),
        sa.Column("reopened", sa.Integer(), nullable=False),
        sa.CheckConstraint("state IN ('open', 'closed')", name=op.f("ck_cases_state")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cases")),
        sa.UniqueConstraint("root_key", "folder", name=op.f("uq_cases_root_key_folder")),
    )
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_cases_last_image_at"), ["last_image_at"], unique=False)
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.add_column(sa.Column("case_id", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("location", sa.String(length=60), nullable=True))
        batch_op.add_column(sa.Column("location_source", sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column("location_issue", sa.Text(), nullable=True))
        batch_op.create_index(batch_op.f("ix_images_case_id"), ["case_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_images_case_id_cases"), "cases", ["case_id"], ["id"]
        )
    _place_existing_images()


def _case_folder(stored: str) -> str | None:
    """The stored form of a stored path's first folder; None for a file in the root."""
    head, sep, _ = decode_path(stored).partition("/")
    return encode_path(head) if sep and head else None


def _place_existing_images() -> None:
    bind = op.get_bind()
    images = sa.table(
        "images",
        sa.column("id", sa.String),
        sa.column("root_key", sa.String),
        sa.column("rel_path", sa.String),
        sa.column("first_seen", sa.DateTime(timezone=True)),
        sa.column("case_id", sa.String),
        sa.column("location", sa.String),
        sa.column("location_source", sa.String),
    )
    cases = sa.table(
        "cases",
        sa.column("id", sa.String),
        sa.column("root_key", sa.String),
        sa.column("folder", sa.String),
        sa.column("state", sa.String),
        sa.column("opened_at", sa.DateTime(timezone=True)),
        sa.column("last_image_at", sa.DateTime(timezone=True)),
        sa.column("closed_at", sa.DateTime(timezone=True)),
        sa.column("closed_by", sa.String),
        sa.column("close_reason", sa.String),
        sa.column("reopened", sa.Integer),
    )
    rows = bind.execute(
        sa.select(images.c.id, images.c.root_key, images.c.rel_path, images.c.first_seen)
    ).all()
    spans: dict[tuple[str, str], list[datetime]] = {}
    members: dict[tuple[str, str], list[str]] = {}
    loose: list[str] = []
    for image_id, root_key, rel_path, first_seen in rows:
        folder = _case_folder(rel_path)
        if folder is None:
            loose.append(image_id)
            continue
        key = (root_key, folder)
        span = spans.setdefault(key, [first_seen, first_seen])
        span[0], span[1] = min(span[0], first_seen), max(span[1], first_seen)
        members.setdefault(key, []).append(image_id)
    for (root_key, folder), (first, last) in spans.items():
        case_id = str(uuid.uuid4())
        bind.execute(
            cases.insert().values(
                id=case_id, root_key=root_key, folder=folder, state="closed", opened_at=first,
                last_image_at=last, closed_at=last, closed_by="migration 0002",
                close_reason="migrated", reopened=0,
            )
        )
        ids = members[(root_key, folder)]
        for start in range(0, len(ids), 500):
            bind.execute(
                images.update()
                .where(images.c.id.in_(ids[start : start + 500]))
                .values(case_id=case_id, location="unspecified", location_source="migrated")
            )
    for start in range(0, len(loose), 500):
        bind.execute(
            images.update()
            .where(images.c.id.in_(loose[start : start + 500]))
            .values(location="unspecified", location_source="migrated")
        )


def downgrade() -> None:
    with op.batch_alter_table("images", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_images_case_id_cases"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_images_case_id"))
        batch_op.drop_column("location_issue")
        batch_op.drop_column("location_source")
        batch_op.drop_column("location")
        batch_op.drop_column("case_id")
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_cases_last_image_at"))
    op.drop_table("cases")
