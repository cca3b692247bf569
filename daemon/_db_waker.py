"""Waking the dashboard when the database changes, instead of at its next poll.

:func:`open_waker` picks, for a database URL or SQLite path:

- SQLite: watchdog (inotify) on the database's folder; a write (IN_MODIFY) to the
  database file or its ``-wal`` wakes the waiter (every commit appends to the WAL).
  Opening, creating, chmod-ing and closing the WAL, and the ``-shm`` file, are ignored:
  readers do all of those, so the dashboard would wake itself.
- PostgreSQL: ``LISTEN`` on :data:`CHANNEL`; the store sends ``NOTIFY`` inside every
  writing transaction, which PostgreSQL delivers when (and only if) it commits.
- Anything else, or when the above cannot start (no folder yet, no inotify, the server
  refused): :class:`PollingWaker`, which only waits out the fallback period.

``wait(timeout_seconds)`` returns True as soon as a change was signalled since the last
call (then a frame should be drawn), False after ``timeout_seconds`` without one (the
caller redraws anyway: clocks and "seconds ago" move). A change during a frame is not
lost: the flag is cleared before the caller reads, so the next ``wait`` returns at once.
Every waker is a context manager; ``close`` stops its thread. Nothing is logged about
paths.
"""

from __future__ import annotations

import logging
import os
import threading
from types import TracebackType

from marginwatch.storage.store import CHANGE_CHANNEL as CHANNEL

__all__ = ["CHANNEL", "ChangeWaker", "PollingWaker", "open_waker"]

logger = logging.getLogger(__name__)


class ChangeWaker:
    """A change flag and the wait on it; subclasses set it from their own thread."""

    kind = "base"

    def __init__(self) -> None:
        self._changed = threading.Event()

    def signal(self) -> None:
        self._changed.set()

    def wait(self, timeout_seconds: float) -> bool:
        woke = self._changed.wait(timeout_seconds)
        self._changed.clear()
        return woke

    def close(self) -> None:
        """Stop watching (idempotent)."""

    def __enter__(self) -> ChangeWaker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class PollingWaker(ChangeWaker):
    """No change notifications: every wait runs its full timeout (the fallback)."""

    kind = "polling"


class SqliteWaker(ChangeWaker):
    """inotify (watchdog) on the database file and its WAL."""

    kind = "inotify"

    def __init__(self, db_path: str) -> None:
        super().__init__()
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        real = os.path.realpath(db_path)
        watched = {real, real + "-wal", real + "-journal"}
        waker = self

        class _Handler(FileSystemEventHandler):
            def on_modified(self, event: FileSystemEvent) -> None:
                # only writes: readers open, create, chmod and close the WAL too
                if os.fsdecode(event.src_path) in watched:
                    waker.signal()

        self._observer = Observer()
        self._observer.daemon = True
        self._observer.schedule(_Handler(), os.path.dirname(real), recursive=False)
        self._observer.start()

    def close(self) -> None:
        if self._observer.is_alive():
            self._observer.stop()
            self._observer.join(5)


class PostgresWaker(ChangeWaker):
    """``LISTEN`` on :data:`CHANNEL` from a thread with its own autocommit connection."""

    kind = "listen"

    def __init__(self, url: str) -> None:
        super().__init__()
        import psycopg
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        query = dict(parsed.query)
        options = query.pop("options", None)
        parsed = parsed.set(drivername="postgresql", query={})
        conninfo = parsed.render_as_string(hide_password=False)
        if isinstance(options, str):  # e.g. a search_path: a keyword of the conninfo
            conninfo = psycopg.conninfo.make_conninfo(conninfo, options=options)
        self._conn = psycopg.connect(conninfo, autocommit=True)
        self._conn.execute(f"LISTEN {CHANNEL}")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mw-db-waker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                for _ in self._conn.notifies(timeout=0.5, stop_after=1):
                    self.signal()
            except psycopg.Error as exc:
                if not self._stop.is_set():
                    logger.warning("database change notifications stopped (%s); polling",
                                   type(exc).__name__)
                return

    def close(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join(5)
            self._conn.close()


def open_waker(db_url: str) -> ChangeWaker:
    """The best waker for ``db_url`` (SQLite path or URL); :class:`PollingWaker` if none."""
    try:
        if db_url.startswith("postgresql"):
            return PostgresWaker(db_url)
        path = _sqlite_path(db_url)
        if path is not None and os.path.isdir(os.path.dirname(os.path.realpath(path))):
            return SqliteWaker(path)
    except Exception as exc:  # noqa: BLE001 - no inotify, server refused: the dashboard polls
        logger.warning("no database change notifications (%s); polling", type(exc).__name__)
    return PollingWaker()


def _sqlite_path(db_url: str) -> str | None:
    """The file of a SQLite URL or bare path; None for other URLs and in-memory databases."""
    if "://" not in db_url:
        return db_url
    if not db_url.startswith("sqlite"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(db_url).database
    return None if not database or database == ":memory:" else database
