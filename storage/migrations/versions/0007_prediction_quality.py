"""Quality gate: the measurements stored with every prediction (predictions.quality_json).

A JSON object (engine.quality ``QualityReport.to_dict``): each check's value, threshold
and which way is bad, and how many tiles the gate left out. NULL on predictions made
before the gate existed.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 14:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("quality_json", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_column("quality_json")
