"""Ground truth append-only: never deleted; changed only as a correction (revision + 1).

A correction (``truth import`` of a new status or details) updates the row with
``revision = revision + 1`` and is audited with both values and the new row's digest;
anything else (a DELETE, an UPDATE that keeps the revision or changes the image) is
refused by a trigger, on SQLite and PostgreSQL (TRUNCATE too).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MESSAGE = "ground_truth is append-only: only a correction (revision + 1) may change a row"
_PG_FN = "marginwatch_truth_corrections_only"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute(
            "CREATE TRIGGER ground_truth_no_delete BEFORE DELETE ON ground_truth "
            "BEGIN SELECT RAISE(ABORT, 'ground_truth is append-only: DELETE refused'); END"
        )
        op.execute(
            "CREATE TRIGGER ground_truth_corrections_only BEFORE UPDATE ON ground_truth "
            "WHEN NEW.image_id IS NOT OLD.image_id OR NEW.revision IS NOT OLD.revision + 1 "
            f"BEGIN SELECT RAISE(ABORT, '{_MESSAGE}'); END"
        )
    elif dialect == "postgresql":
        op.execute(
            f"CREATE FUNCTION {_PG_FN}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF TG_OP = 'UPDATE' AND NEW.image_id = OLD.image_id "
            "AND NEW.revision = OLD.revision + 1 THEN RETURN NEW; END IF; "
            f"RAISE EXCEPTION '{_MESSAGE} (% refused)', TG_OP; END $$"
        )
        op.execute(
            "CREATE TRIGGER ground_truth_corrections_only BEFORE UPDATE OR DELETE ON "
            f"ground_truth FOR EACH ROW EXECUTE FUNCTION {_PG_FN}()"
        )
        op.execute(
            "CREATE TRIGGER ground_truth_no_truncate BEFORE TRUNCATE ON ground_truth "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {_PG_FN}()"
        )
    else:  # pragma: no cover - storage refuses other backends before migrating
        raise NotImplementedError(f"append-only ground-truth triggers for {dialect}")


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS ground_truth_no_delete")
        op.execute("DROP TRIGGER IF EXISTS ground_truth_corrections_only")
    elif dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS ground_truth_corrections_only ON ground_truth")
        op.execute("DROP TRIGGER IF EXISTS ground_truth_no_truncate ON ground_truth")
        op.execute(f"DROP FUNCTION IF EXISTS {_PG_FN}()")
