"""Schema versions: the Alembic migrations shipped in this package, run programmatically.

No ``alembic.ini`` and no working directory are involved: :func:`alembic_config` points
Alembic at ``marginwatch/storage/migrations`` and hands it an open connection (the one
whose writer transaction began with ``BEGIN IMMEDIATE`` on SQLite).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, text

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "MIGRATIONS_DIR",
    "REVISIONS",
    "alembic_config",
    "current_revision",
    "downgrade",
    "head_revision",
    "known_revisions",
    "upgrade",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Every revision, oldest first. Kept here so that opening a database (the auditor CLI,
# the dashboard) checks the version without importing Alembic; a test asserts that this
# equals the migrations directory's history. Append each new revision.
REVISIONS: tuple[str, ...] = ("0001",)


def alembic_config(connection: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    return REVISIONS[-1]


def known_revisions() -> set[str]:
    return set(REVISIONS)


def current_revision(connection: Connection) -> str | None:
    """The database's revision (alembic_version), None when it has none."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    rows = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    if len(rows) > 1:
        return ",".join(sorted(rows))  # several heads: unknown to this code, refused
    return rows[0] if rows else None


def upgrade(connection: Connection, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(connection), revision)


def downgrade(connection: Connection, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(connection), revision)
