"""Opening a database: URL parsing, SQLite pragmas, transaction begin, error translation.

SQLite (the embedded default): WAL, ``foreign_keys=ON``, ``synchronous=FULL``, a busy
timeout; writers start every transaction with ``BEGIN IMMEDIATE`` (so a writer waits for
the lock at the start, never fails half-way with SQLITE_BUSY on upgrade from a read
lock), a read-write store's reads with a deferred ``BEGIN`` (:data:`READ_OPTION`: they
take no write lock, so they never wait for a writer), readers connect with the
``mode=ro`` URI and ``query_only``. pysqlite's own
transaction handling is switched off (``isolation_level=None``) and SQLAlchemy's
``begin`` event emits BEGIN: the recipe from SQLAlchemy's pysqlite documentation
("Serializable isolation / Savepoints / Transactional DDL").

PostgreSQL via psycopg 3 (``postgresql+psycopg://``); readers set the session read-only.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marginwatch.engine.errors import DatabaseUnavailableError, StorageError
from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.pool import QueuePool

__all__ = ["Target", "check_sqlite_file", "make_engine", "parse_target", "translate_errors"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """Where the database is: ``sqlite_path`` for SQLite, else a server ``url``."""

    url: str
    sqlite_path: Path | None
    display: str  # for messages: the file, or the URL without its password

    @property
    def is_sqlite(self) -> bool:
        return self.sqlite_path is not None


def parse_target(url_or_path: str | Path) -> Target:
    """A bare path means an SQLite file; ``sqlite:///PATH`` too; anything else is a URL."""
    raw = str(url_or_path)
    if "://" not in raw:
        path = Path(raw).expanduser()
        return Target(url=f"sqlite:///{path}", sqlite_path=path, display=str(path))
    try:
        url = make_url(raw)
    except exc.ArgumentError as error:
        raise DatabaseUnavailableError(f"{raw}: not a database URL ({error})") from error
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            raise DatabaseUnavailableError(f"{raw}: an in-memory SQLite database cannot be shared")
        path = Path(url.database).expanduser()
        return Target(url=raw, sqlite_path=path, display=str(path))
    if url.get_backend_name() != "postgresql":
        raise DatabaseUnavailableError(
            f"{url.render_as_string(hide_password=True)}: unsupported database "
            f"{url.get_backend_name()!r}; expected sqlite or postgresql+psycopg"
        )
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    return Target(
        url=url.render_as_string(hide_password=False),
        sqlite_path=None,
        display=url.render_as_string(hide_password=True),
    )


#: execution option of the engine a store reads through: its SQLite transactions begin
#: deferred (``BEGIN``), not ``BEGIN IMMEDIATE``
READ_OPTION = "marginwatch_read"


def make_engine(target: Target, *, readonly: bool, busy_timeout_seconds: float) -> Engine:
    if target.sqlite_path is None:
        return _postgres_engine(target, readonly=readonly)
    return _sqlite_engine(target.sqlite_path, readonly=readonly, busy_s=busy_timeout_seconds)


def _sqlite_engine(path: Path, *, readonly: bool, busy_s: float) -> Engine:
    def connect() -> sqlite3.Connection:
        if readonly:
            uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
            return sqlite3.connect(
                uri, uri=True, timeout=busy_s, isolation_level=None, check_same_thread=False
            )
        # SQLite opens a file it may not write read-only, silently, and the pool would
        # keep that connection read-only for good: refuse to connect instead, so that a
        # later attempt connects read-write once permissions (or the mount) are back.
        for where in (path, path.parent):
            if where.exists() and not os.access(where, os.W_OK):
                raise sqlite3.OperationalError(
                    f"attempt to write a readonly database ({where} is not writable now)"
                )
        return sqlite3.connect(
            str(path), timeout=busy_s, isolation_level=None, check_same_thread=False
        )

    # The URL only picks the dialect; ``creator`` opens the file. QueuePool explicitly: with
    # a database-less URL SQLAlchemy would assume :memory: and use SingletonThreadPool.
    engine = create_engine(
        "sqlite+pysqlite://", creator=connect, poolclass=QueuePool, pool_size=4, max_overflow=8
    )
    busy_ms = int(busy_s * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if readonly:
                cursor.execute("PRAGMA query_only = ON")
            else:
                mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()
                if mode and str(mode[0]).lower() != "wal":
                    logger.warning("SQLite refused WAL journal mode (got %s)", mode[0])
                cursor.execute("PRAGMA synchronous = FULL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # a read of a read-write store (READ_OPTION) must not take the write lock: in WAL
        # mode a deferred BEGIN reads a snapshot beside the writers instead of queueing
        # behind their fsync'd commits
        reading = readonly or connection.get_execution_options().get(READ_OPTION, False)
        connection.exec_driver_sql("BEGIN" if reading else "BEGIN IMMEDIATE")

    return engine


def _postgres_engine(target: Target, *, readonly: bool) -> Engine:
    engine = create_engine(target.url, pool_pre_ping=True, pool_size=4, max_overflow=8)
    if readonly:

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.read_only = True

    return engine


def _describe(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    return text[0] if text else type(error).__name__


@contextmanager
def translate_errors(
    target: Target, *, readonly: bool, busy_timeout_seconds: float
) -> Iterator[None]:
    """Turn driver errors about the database itself into one-line StorageErrors."""
    try:
        yield
    except StorageError:
        raise
    except exc.DBAPIError as error:
        raise _translate(error, target, readonly, busy_timeout_seconds) from error


def _translate(
    error: exc.DBAPIError, target: Target, readonly: bool, busy_timeout_seconds: float
) -> Exception:
    where = target.display
    detail = _describe(error)
    lowered = detail.lower()
    if target.is_sqlite:
        if "locked" in lowered or "busy" in lowered:
            return DatabaseUnavailableError(
                f"{where}: database is locked by another process "
                f"(waited {busy_timeout_seconds:g} s for it)"
            )
        if "not a database" in lowered or "malformed" in lowered:
            return DatabaseUnavailableError(
                f"{where}: not a marginwatch SQLite database ({detail})"
            )
        if "readonly" in lowered or "read-only" in lowered:
            if readonly:
                return DatabaseUnavailableError(
                    f"{where}: opened read-only; this operation writes ({detail})"
                )
            return DatabaseUnavailableError(
                f"{where}: the database file (or its folder) is read-only; cannot write ({detail})"
            )
        if "unable to open" in lowered:
            return DatabaseUnavailableError(f"{where}: cannot open the database file ({detail})")
        if "disk i/o" in lowered or "disk is full" in lowered:
            return DatabaseUnavailableError(f"{where}: I/O error ({detail})")
    else:
        if isinstance(error, exc.OperationalError) and (
            "connect" in lowered or "connection" in lowered or "server" in lowered
        ):
            return DatabaseUnavailableError(f"{where}: cannot connect ({detail})")
        if "read-only transaction" in lowered:
            return DatabaseUnavailableError(
                f"{where}: opened read-only; this operation writes ({detail})"
            )
        if "lock" in lowered and "timeout" in lowered:
            return DatabaseUnavailableError(f"{where}: database is locked ({detail})")
    if "append-only" in lowered:
        return StorageError(f"{where}: refused, the record is append-only ({detail})")
    return StorageError(f"{where}: database error: {detail}")


def check_sqlite_file(path: Path, *, readonly: bool, create: bool) -> None:
    """Refuse early, naming the file, what SQLite would report obscurely or not at all."""
    if path.is_dir():
        raise DatabaseUnavailableError(f"{path}: is a directory, not a database file")
    if not path.exists():
        if readonly or not create:
            raise DatabaseUnavailableError(
                f"{path}: no such database file"
                + ("" if readonly else "; run `marginwatch db upgrade` to create it")
            )
        if not path.parent.is_dir():
            # A mistyped URL must not quietly build a folder tree somewhere else.
            raise DatabaseUnavailableError(
                f"{path}: its folder {path.parent} does not exist; create it first "
                "(or correct the path)"
            )
        return
    try:
        with path.open("rb") as fh:
            header = fh.read(16)
    except OSError as exc:
        raise DatabaseUnavailableError(f"{path}: cannot read ({exc.strerror})") from exc
    if header and header != b"SQLite format 3\x00":
        raise DatabaseUnavailableError(f"{path}: not an SQLite database (wrong file header)")
    if not readonly and not os.access(path, os.W_OK):
        raise DatabaseUnavailableError(
            f"{path}: the database file is read-only; cannot open it for writing"
        )
    if not readonly and not os.access(path.parent, os.W_OK):
        raise DatabaseUnavailableError(
            f"{path.parent}: folder is read-only; SQLite needs it writable for its WAL files"
        )
