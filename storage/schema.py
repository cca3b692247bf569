"""Schema versions: the Alembic migrations shipped in this package, run programmatically.

No ``alembic.ini`` and no working directory are involved: :func:`alembic_config` points
Alembic at ``marginwatch/storage/migrations`` and hands it an open connection (the one
whose writer transaction began with ``BEGIN IMMEDIATE`` on SQLite).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from marginwatch.engine.errors import DatabaseUnavailableError
from sqlalchemy import Connection, Engine, inspect, text

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
    "migrating",
    "upgrade",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Every revision, oldest first. Kept here so that opening a database (the auditor CLI,
# the dashboard) checks the version without importing Alembic; a test asserts that this
# equals the migrations directory's history. Append each new revision.
REVISIONS: tuple[str, ...] = ("0001", "0002", "0003", "0004", "0005", "0006", "0007",
                                 "0008", "0009", "0010",
                                 "0011")


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


@contextmanager
def migrating(engine: Engine) -> Iterator[Connection]:
    """One writing transaction for schema changes (upgrade or downgrade).

    On SQLite, foreign-key enforcement is switched off for it, as SQLite's own procedure
    for altering a table asks: Alembic's batch mode copies a table, drops the old one and
    renames the copy, and dropping ``images`` while jobs and alerts point at it fails
    with enforcement on, even though the copy keeps every id. ``PRAGMA foreign_key_check``
    must find nothing before the commit; enforcement is back on afterwards.
    """
    with engine.connect() as connection:
        sqlite = engine.dialect.name == "sqlite"
        raw = connection.connection.driver_connection if sqlite else None
        if raw is not None:
            raw.execute("PRAGMA foreign_keys = OFF")  # outside a transaction, or it is ignored
        try:
            with connection.begin():
                yield connection
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise DatabaseUnavailableError(
                            f"schema change left {len(broken)} broken foreign key(s), first "
                            f"{tuple(broken[0])}; rolled back"
                        )
        finally:
            if raw is not None:
                raw.execute("PRAGMA foreign_keys = ON")


def upgrade(connection: Connection, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(connection), revision)


def downgrade(connection: Connection, revision: str) -> None:
    from alembic import command

    command.downgrade(alembic_config(connection), revision)
