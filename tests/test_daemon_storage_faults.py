"""The daemon heals by itself after transient storage faults.

A real ``marginwatch run`` and real faults: another process holding SQLite's write
lock for longer than the busy timeout and the lease (a "database is locked" storm)
while images are in flight. When the lock goes, every image ends ``done`` once, on its
first attempt: nothing lost, nothing doubled, the audit chain intact.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from daemon_support import Daemon, all_final, assert_audit_ok, query, states, wait_for, write_image

LEASE_SECONDS = 3.0


@pytest.mark.slow
def test_locked_storm_costs_no_attempt(tmp_path: Path, tiny_model_dir: Path) -> None:
    watch = tmp_path / "export"
    (watch / "case1").mkdir(parents=True)
    work = tmp_path / "state"
    work.mkdir()
    daemon = Daemon(work, watch, tiny_model_dir, daemon={
        "db_busy_timeout_seconds": 0.3, "lease_seconds": LEASE_SECONDS, "workers": 1})
    names = [f"case1/scan{i}.tif" for i in range(6)]
    with daemon:
        daemon.start().wait_ready()
        for i, name in enumerate(names):
            write_image(watch / name, seed=40 + i, side=320)

        def claimed(now: dict) -> bool:
            return any(v[-1][0] == "processing" for v in now.values())

        wait_for(daemon.db, claimed, 60, daemon)
        holder = sqlite3.connect(daemon.db, timeout=30, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # the storm: nobody else may write
        try:
            # held until the daemon has met it, and past the lease of what is in flight
            deadline = time.monotonic() + 60
            while "database is locked" not in daemon.log() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert "database is locked" in daemon.log(), daemon.log()
            time.sleep(LEASE_SECONDS * 2)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        final = wait_for(daemon.db, all_final(set(names)), 120, daemon)
        assert daemon.alive()
        assert daemon.stop() == 0
    for name in names:
        assert final[name] == [("done", 1, None)], (name, final[name])  # one row, 1st attempt
    assert len(states(daemon.db)) == len(names)
    predictions = query(daemon.db, "SELECT count(*) FROM predictions")[0][0]
    assert predictions == len(names)  # nothing recorded twice
    assert_audit_ok(daemon.db)
