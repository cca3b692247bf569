"""End-to-end: SIGKILL at random moments, and SIGTERM during processing, lose nothing."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest
from daemon_support import (
    Daemon,
    all_final,
    assert_audit_ok,
    audit_actions,
    query,
    states,
    wait_for,
    write_image,
)


@pytest.mark.slow
def test_sigkill_rounds_leave_every_file_in_one_final_state(tmp_path: Path,
                                                            tiny_model_dir) -> None:
    watch = tmp_path / "export"
    work = tmp_path / "state"
    work.mkdir()
    names = [f"case{i % 4}/img{i:03d}.tif" for i in range(100)]
    rng = random.Random(7)
    daemon = Daemon(work, watch, tiny_model_dir,
                    daemon={"lease_seconds": 1.5, "max_attempts": 10, "rescan_seconds": 2.0})
    written = 0
    with daemon:
        for _round in range(3):
            for name in names[written: written + 34]:  # files keep arriving between crashes
                write_image(watch / name, seed=written)
                written += 1
            daemon.start().wait_ready()
            time.sleep(rng.uniform(0.3, 2.5))
            daemon.kill()  # SIGKILL: no clean-up at all
        for i, name in enumerate(names[written:], start=written):
            write_image(watch / name, seed=i)
        daemon.start().wait_ready()
        final = wait_for(daemon.db, all_final(set(names)), 150, daemon)
        assert daemon.stop() == 0
    assert set(final) == set(names)
    for name, versions in final.items():
        assert len(versions) == 1, (name, versions)  # one record per file version
        assert versions[0][0] == "done", (name, versions)
    (predictions,) = query(daemon.db, "SELECT count(*) FROM predictions")[0]
    assert predictions == 100  # none assessed twice, even when killed mid-way
    assert query(daemon.db, "PRAGMA integrity_check") == [("ok",)]
    assert_audit_ok(daemon.db)


def test_sigterm_during_processing_exits_zero_within_bound(
    tmp_path: Path, tiny_model_dir, daemon_db: str | None  # noqa: ANN001
) -> None:
    watch = tmp_path / "export"
    work = tmp_path / "state"
    work.mkdir()
    names = [f"case1/img{i:03d}.tif" for i in range(40)]
    shutdown_seconds = 8.0
    daemon = Daemon(work, watch, tiny_model_dir,
                    daemon={"shutdown_seconds": shutdown_seconds, "workers": 1}, db=daemon_db)
    with daemon:
        watch.mkdir()
        daemon.start().wait_ready()
        for i, name in enumerate(names):
            write_image(watch / name, seed=3000 + i)
        wait_for(daemon.db, lambda s: sum(v[-1][0] == "done" for v in s.values()) >= 3, 60,
                 daemon)
        started = time.monotonic()
        rc = daemon.stop(signal.SIGTERM, timeout=shutdown_seconds + 10)
        took = time.monotonic() - started
        assert rc == 0, daemon.log()
        assert took < shutdown_seconds + 3, took
        middle = states(daemon.db)
        assert all(v[-1][0] != "processing" for v in middle.values()), middle  # none held
        assert "daemon.stop" in audit_actions(daemon.db)
        assert "STOPPING=1" in daemon.messages
        daemon.start().wait_ready()  # nothing lost: the rest is picked up after a restart
        final = wait_for(daemon.db, all_final(set(names)), 120, daemon)
        assert daemon.stop() == 0
    assert all(v[-1][0] == "done" and len(v) == 1 for v in final.values()), final
    assert_audit_ok(daemon.db)


def test_sigkilled_daemons_jobs_are_picked_up_at_once_on_restart(
    tmp_path: Path, tiny_model_dir, daemon_db: str | None  # noqa: ANN001
) -> None:
    """Jobs leased to a killed daemon of this host go back at start-up, not after the lease."""
    import json

    watch = tmp_path / "export"
    work = tmp_path / "state"
    work.mkdir()
    names = [f"case1/img{i:03d}.tif" for i in range(30)]
    lease_seconds = 600.0  # far longer than the test may take
    daemon = Daemon(work, watch, tiny_model_dir,
                    daemon={"lease_seconds": lease_seconds, "workers": 1}, db=daemon_db)
    with daemon:
        for i, name in enumerate(names):
            write_image(watch / name, seed=5000 + i)
        daemon.start().wait_ready()
        wait_for(daemon.db, lambda s: any(v[-1][0] == "processing" for v in s.values()), 60,
                 daemon)
        daemon.kill()
        held = [k for k, v in states(daemon.db).items() if v[-1][0] == "processing"]
        assert held, "no job was in flight when the daemon was killed"
        started = time.monotonic()
        daemon.start().wait_ready()
        final = wait_for(daemon.db, all_final(set(names)), 120, daemon)
        took = time.monotonic() - started
        assert daemon.stop() == 0
    assert took < lease_seconds / 2, took
    assert all(v[-1][0] == "done" and len(v) == 1 for v in final.values()), final
    requeued = [json.loads(p) for (p,) in query(
        daemon.db, "SELECT payload_json FROM audit_events WHERE action = 'job.requeued'")]
    assert len(requeued) == len(held)
    assert all(p["reason"] == "owner-gone" for p in requeued)
    assert_audit_ok(daemon.db)
