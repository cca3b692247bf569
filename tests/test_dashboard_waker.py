"""The dashboard wakes on change: inotify on SQLite + WAL, LISTEN/NOTIFY on PostgreSQL.

Real databases: a writer (the store, in a subprocess for SQLite so that the writes come
from another process, as the daemon's do) commits, and the waker must fire; the
dashboard's own read-only reads must not wake it; without a way to be notified it
falls back to polling. Every "did not wake" is a bounded wait on the wake itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from marginwatch.daemon._db_waker import PollingWaker, open_waker
from marginwatch.daemon.dashboard import Source
from marginwatch.storage import Store
from marginwatch.storage.testing import PG_URL_ENV, backend_params, database_url

BEAT = """
import sys
from marginwatch.storage import Store
with Store.open(sys.argv[1]) as store:
    store.heartbeat("other-process", details={"n": 1})
"""


@pytest.fixture(params=backend_params())
def db_url(request, tmp_path):  # noqa: ANN001, ANN201
    with database_url(request.param, tmp_path) as url:
        with Store.open(url, upgrade=True):
            pass
        yield url


def test_a_commit_wakes_it_and_its_own_reads_do_not(db_url: str) -> None:
    with open_waker(db_url) as waker:
        assert waker.kind in ("inotify", "listen")
        with Source(db_url) as source:
            source.snapshot()  # a read-only read of everything a frame shows
            assert waker.wait(0.5) is False  # bounded wait on the wake it must not get
        if waker.kind == "inotify":  # the writer is another process, as the daemon is
            subprocess.run([sys.executable, "-c", BEAT, db_url], check=True, timeout=60)
        else:
            with Store.open(db_url) as store:
                store.heartbeat("other-connection")
        assert waker.wait(10.0) is True  # woken by the commit, not by the timeout
        assert waker.wait(0.3) is False  # one commit, one wake (the flag was cleared)


def test_falls_back_to_polling_where_it_cannot_be_notified(tmp_path: Path) -> None:
    for url in (str(tmp_path / "no" / "such" / "folder" / "mw.db"), "sqlite://",
                "mysql://nobody@127.0.0.1/none"):
        with open_waker(url) as waker:
            assert isinstance(waker, PollingWaker), url
            assert waker.wait(0.05) is False


@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get(PG_URL_ENV), reason=f"{PG_URL_ENV} not set")
def test_rollback_does_not_wake_a_postgres_listener(tmp_path: Path) -> None:
    with database_url("postgresql", tmp_path) as url:
        with Store.open(url, upgrade=True) as store, open_waker(url) as waker:
            assert waker.kind == "listen"
            with pytest.raises(RuntimeError), store._write():
                raise RuntimeError("rolled back")
            assert waker.wait(0.5) is False  # NOTIFY is delivered only on commit
            store.heartbeat("w")
            assert waker.wait(10.0) is True
