"""A read-write store's reads do not queue behind a writer (SQLite, WAL).

The daemon's reader thread looks duplicates up while the main thread records
discoveries and the finisher commits results. Writers begin with BEGIN IMMEDIATE; if
reads did too, every duplicate lookup would wait for the fsync'd commits before it.
A second, real SQLite connection holds the write lock here.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from marginwatch.engine.errors import DatabaseUnavailableError
from marginwatch.storage import Store

OWNER = "marginwatch-daemon@theatre:1"


def test_reads_go_on_while_another_connection_holds_the_write_lock(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    with Store.open(db, upgrade=True) as store:
        store.record_discovery("/export", "case-01/a.tif", 10, 1, OWNER)
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # the write lock, held
        holder.execute("UPDATE jobs SET attempts = attempts")
        with Store.open(db, busy_timeout_seconds=0.5) as store:
            # reads: a snapshot beside the writer, no waiting for its lock
            assert store.queue_depth() == 1
            assert [r.rel_path for r in store.list_images()] == ["case-01/a.tif"]
            # the test of the test: a write does wait for the lock, and gives up
            with pytest.raises(DatabaseUnavailableError, match="locked|busy"):
                store.record_discovery("/export", "case-01/b.tif", 10, 1, OWNER)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
