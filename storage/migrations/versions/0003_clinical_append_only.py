"""Clinical records append-only: predictions, tiles, heatmaps, alerts.

Triggers refuse UPDATE and DELETE of predictions, tiles and heatmaps, and DELETE of
alerts; an alert may be updated only to acknowledge it, once (the acknowledgement
columns of an unacknowledged alert, nothing else). On PostgreSQL TRUNCATE is refused
too. What the triggers cannot stop (someone who drops them first) the row digests in
the audit chain show: ``marginwatch audit verify`` names the row.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FROZEN = ("predictions", "tiles", "heatmaps")
# alert columns an acknowledgement may set; every other column is frozen
_ALERT_FROZEN = ("id", "kind", "image_id", "prediction_id", "job_id", "message", "raised_at")
_PG_FROZEN_FN = "marginwatch_clinical_append_only"
_PG_ALERT_FN = "marginwatch_alert_acknowledge_only"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for table in FROZEN:
            for verb in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {verb} refused'); END"
                )
        op.execute(
            "CREATE TRIGGER alerts_no_delete BEFORE DELETE ON alerts "
            "BEGIN SELECT RAISE(ABORT, 'alerts is append-only: DELETE refused'); END"
        )
        changed = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in _ALERT_FROZEN)
        op.execute(
            "CREATE TRIGGER alerts_acknowledge_only BEFORE UPDATE ON alerts "
            f"WHEN OLD.acknowledged_at IS NOT NULL OR {changed} "
            "BEGIN SELECT RAISE(ABORT, 'alerts is append-only: only an unacknowledged alert "
            "may be acknowledged, once'); END"
        )
    elif dialect == "postgresql":
        op.execute(
            f"CREATE FUNCTION {_PG_FROZEN_FN}() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP; END $$"
        )
        changed = " OR ".join(f"NEW.{c} IS DISTINCT FROM OLD.{c}" for c in _ALERT_FROZEN)
        op.execute(
            f"CREATE FUNCTION {_PG_ALERT_FN}() RETURNS trigger LANGUAGE plpgsql AS $$ "
            f"BEGIN IF OLD.acknowledged_at IS NOT NULL OR {changed} THEN "
            "RAISE EXCEPTION 'alerts is append-only: only an unacknowledged alert may be "
            "acknowledged, once'; END IF; RETURN NEW; END $$"
        )
        for table in FROZEN:
            op.execute(
                f"CREATE TRIGGER {table}_no_update_delete BEFORE UPDATE OR DELETE ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION {_PG_FROZEN_FN}()"
            )
        for table in (*FROZEN, "alerts"):
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION {_PG_FROZEN_FN}()"
            )
        op.execute(
            "CREATE TRIGGER alerts_no_delete BEFORE DELETE ON alerts "
            f"FOR EACH ROW EXECUTE FUNCTION {_PG_FROZEN_FN}()"
        )
        op.execute(
            "CREATE TRIGGER alerts_acknowledge_only BEFORE UPDATE ON alerts "
            f"FOR EACH ROW EXECUTE FUNCTION {_PG_ALERT_FN}()"
        )
    else:  # pragma: no cover - storage refuses other backends before migrating
        raise NotImplementedError(f"append-only clinical triggers for {dialect}")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for table in FROZEN:
            for verb in ("update", "delete"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_no_{verb}")
        op.execute("DROP TRIGGER IF EXISTS alerts_no_delete")
        op.execute("DROP TRIGGER IF EXISTS alerts_acknowledge_only")
    elif dialect == "postgresql":
        for table in FROZEN:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_update_delete ON {table}")
        for table in (*FROZEN, "alerts"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
        op.execute("DROP TRIGGER IF EXISTS alerts_no_delete ON alerts")
        op.execute("DROP TRIGGER IF EXISTS alerts_acknowledge_only ON alerts")
        op.execute(f"DROP FUNCTION IF EXISTS {_PG_FROZEN_FN}()")
        op.execute(f"DROP FUNCTION IF EXISTS {_PG_ALERT_FN}()")
