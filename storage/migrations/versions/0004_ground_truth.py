"""Ground truth and monitoring: histopathology per image, per-prediction summaries, alarms.

``ground_truth`` holds the imported final margin status of an image (one row per image;
a correction updates it and is audited with both values). ``prediction_summaries`` holds
a small image summary per prediction (the mean pooled CNN features) for input-drift
monitoring. ``monitor_alarms`` holds the alarms the dashboard shows until acknowledged.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 14:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ground_truth",
        sa.Column("image_id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("reported_by", sa.String(length=200), nullable=True),
        sa.Column("report_date", sa.Date(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("source_sha256", sa.String(length=64), nullable=False),
        sa.Column("imported_by", sa.String(length=200), nullable=False),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.CheckConstraint("status IN ('tumour', 'clear')", name=op.f("ck_ground_truth_status")),
        sa.CheckConstraint("revision >= 1", name=op.f("ck_ground_truth_revision")),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_ground_truth_image_id_images")
        ),
        sa.PrimaryKeyConstraint("image_id", name=op.f("pk_ground_truth")),
    )
    with op.batch_alter_table("ground_truth", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ground_truth_imported_at"), ["imported_at"],
                              unique=False)

    op.create_table(
        "prediction_summaries",
        sa.Column("prediction_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["prediction_id"],
            ["predictions.id"],
            name=op.f("fk_prediction_summaries_prediction_id_predictions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("prediction_id", name=op.f("pk_prediction_summaries")),
    )

    op.create_table(
        "monitor_alarms",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("details_json", sa.Text(), nullable=False),
        sa.Column("raised_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("acknowledged_by", sa.String(length=200), nullable=True),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ack_note", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "kind IN ('sensitivity', 'calibration', 'input-drift')",
            name=op.f("ck_monitor_alarms_kind"),
        ),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_monitor_alarms_model_id_models")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_monitor_alarms")),
    )
    with op.batch_alter_table("monitor_alarms", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_monitor_alarms_model_id"), ["model_id"],
                              unique=False)
        batch_op.create_index(batch_op.f("ix_monitor_alarms_raised_at"), ["raised_at"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("monitor_alarms", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_monitor_alarms_raised_at"))
        batch_op.drop_index(batch_op.f("ix_monitor_alarms_model_id"))
    op.drop_table("monitor_alarms")
    op.drop_table("prediction_summaries")
    with op.batch_alter_table("ground_truth", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ground_truth_imported_at"))
    op.drop_table("ground_truth")
