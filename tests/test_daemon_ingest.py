"""End-to-end: ``marginwatch run`` ingests bursts, slow writers, renames and moves.

Each test runs the real daemon process on real folders with a tiny model, and asserts
the end state in the SQLite database: every file recorded once, assessed once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_support import (
    Daemon,
    all_final,
    assert_audit_ok,
    audit_actions,
    image_bytes,
    query,
    wait_for,
    wait_until,
    write_image,
)

SLOW_WRITER = r"""
import sys, time
data = open(sys.argv[1], "rb").read()
chunks = 12
step = -(-len(data) // chunks)
with open(sys.argv[2], "wb") as fh:
    for i in range(chunks):
        fh.write(data[i * step:(i + 1) * step])
        fh.flush()
        time.sleep(0.35)
"""


@pytest.fixture
def model_dir(tiny_model_dir) -> Path:  # noqa: ANN001
    return Path(tiny_model_dir)


def _dirs(tmp_path: Path) -> tuple[Path, Path]:
    watch = tmp_path / "export"
    watch.mkdir()
    work = tmp_path / "state"
    work.mkdir()
    return watch, work


@pytest.mark.slow
@pytest.mark.parametrize("observer", ["inotify", "polling"])
def test_burst_and_slow_writer(tmp_path: Path, model_dir: Path, observer: str) -> None:
    """300 images copied in at once + one large TIFF written in chunks over ~4 s."""
    watch, work = _dirs(tmp_path)
    staging = tmp_path / "staging"
    for i in range(300):
        write_image(staging / f"img{i:03d}.tif", seed=i, side=64)
    big_source = tmp_path / "big.tif"
    write_image(big_source, seed=10_000, side=384)
    daemon = Daemon(work, watch, model_dir,
                    daemon={"observer": observer, "settle_seconds": 1.0, "rescan_seconds": 60.0})
    with daemon:
        daemon.start().wait_ready()
        (watch / "case1").mkdir()
        writer = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(big_source),
                                   str(watch / "case1" / "big.tif")])
        subprocess.run(["cp", "-r", str(staging), str(watch / "case2")], check=True)
        writer.wait(30)
        assert writer.returncode == 0
        expected = {f"case2/img{i:03d}.tif" for i in range(300)} | {"case1/big.tif"}
        final = wait_for(daemon.db, all_final(expected), timeout=90, daemon=daemon)
        assert daemon.stop() == 0
    assert set(final) == expected
    for rel, versions in final.items():
        assert len(versions) == 1, (rel, versions)  # recorded once
        state, attempts, error = versions[0]
        assert (state, attempts) == ("done", 1), (rel, versions, daemon.log())
    size, sha = query(daemon.db, "SELECT size, sha256 FROM images WHERE rel_path = ?",
                      ("case1/big.tif",))[0]
    assert size == big_source.stat().st_size  # never recorded while incomplete
    import hashlib

    assert sha == hashlib.sha256(big_source.read_bytes()).hexdigest()
    (predictions,) = query(daemon.db, "SELECT count(*) FROM predictions")[0]
    assert predictions == 301
    assert "READY=1" in daemon.messages
    assert any(m.startswith("STATUS=") for m in daemon.messages)


def test_temp_name_rename_move_in_and_duplicate(
    tmp_path: Path, model_dir: Path, daemon_db: str | None
) -> None:
    """A temp name is ignored until renamed; a move from elsewhere is seen; same bytes link."""
    watch, work = _dirs(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    daemon = Daemon(work, watch, model_dir, daemon={"rescan_seconds": 60.0}, db=daemon_db)
    with daemon:
        daemon.start().wait_ready()
        (watch / "case1").mkdir()
        part = watch / "case1" / "a.tif.part"
        part.write_bytes(image_bytes(1))
        # the temp name must not be recorded: wait well past settle for a row that says it was
        recorded = wait_until(lambda: query(daemon.db, "SELECT count(*) FROM images")[0][0] > 0,
                              timeout=1.5)
        assert not recorded
        os.rename(part, watch / "case1" / "a.tif")
        write_image(outside / "b.tif", seed=2)
        shutil.move(outside / "b.tif", watch / "case1" / "b.tif")
        wait_for(daemon.db, all_final({"case1/a.tif", "case1/b.tif"}), 60, daemon)
        # identical bytes under another name: linked, not re-run
        (watch / "case1" / "a-copy.tif").write_bytes(image_bytes(1))
        final = wait_for(daemon.db, all_final({"case1/a-copy.tif"}), 60, daemon)
        os.kill(daemon.proc.pid, signal.SIGHUP)  # reload: audited
        deadline = time.monotonic() + 20
        while "config.reloaded" not in audit_actions(daemon.db) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert daemon.stop() == 0
    assert [v[0] for v in final["case1/a.tif"]] == ["done"]
    assert [v[0] for v in final["case1/b.tif"]] == ["done"]
    assert [v[0] for v in final["case1/a-copy.tif"]] == ["duplicate"]
    assert not any(rel.endswith(".part") for rel in final)
    (linked,) = query(daemon.db, "SELECT j.prediction_id FROM jobs j JOIN images i ON "
                      "i.id = j.image_id WHERE i.rel_path = 'case1/a-copy.tif'")[0]
    (original,) = query(daemon.db, "SELECT j.prediction_id FROM jobs j JOIN images i ON "
                        "i.id = j.image_id WHERE i.rel_path = 'case1/a.tif'")[0]
    assert linked == original
    actions = audit_actions(daemon.db)
    for action in ("config.loaded", "daemon.start", "image.duplicate", "config.reloaded",
                   "daemon.stop"):
        assert action in actions, action
    (start,) = query(daemon.db, "SELECT payload_json FROM audit_events WHERE action = "
                     "'daemon.start'")[0]
    assert json.loads(start)["inference_threads"] == 1  # the helper's OMP_NUM_THREADS=1
    (hb_owner, hb_status) = query(daemon.db, "SELECT owner, status FROM heartbeat")[0]
    assert hb_status == "stopped" and "marginwatch-daemon@" in hb_owner
    assert_audit_ok(daemon.db)
    # logs name images by id, never by file name
    log = daemon.log()
    assert "a.tif" not in log and "b.tif" not in log and "case1" not in log


def test_reconcile_scan_finds_missed_files(
    tmp_path: Path, model_dir: Path, daemon_db: str | None
) -> None:
    """Files created while the daemon was down, and with no observer at all."""
    watch, work = _dirs(tmp_path)
    for i in range(5):
        write_image(watch / "before" / f"b{i}.tif", seed=100 + i)
    daemon = Daemon(work, watch, model_dir, daemon={"observer": "none", "rescan_seconds": 1.0},
                    db=daemon_db)
    with daemon:
        daemon.start().wait_ready()
        wait_for(daemon.db, all_final({f"before/b{i}.tif" for i in range(5)}), 60, daemon)
        for i in range(5):  # no observer: only the periodic rescan can find these
            write_image(watch / "during" / f"d{i}.tif", seed=200 + i)
        expected = {f"before/b{i}.tif" for i in range(5)} | {f"during/d{i}.tif" for i in range(5)}
        final = wait_for(daemon.db, all_final(expected), 60, daemon)
        assert daemon.stop() == 0
    assert all(v == [("done", 1, None)] for v in final.values()), final


def test_two_daemons_sharing_one_database_claim_only_their_own_folder(
    tmp_path: Path, model_dir: Path, daemon_db: str | None
) -> None:
    """Two scanners, two folders, one database: each daemon assesses its own images once."""
    daemons = []
    expected: dict[str, set[str]] = {}
    for n in range(2):
        watch = tmp_path / f"export{n}"
        work = tmp_path / f"state{n}"
        work.mkdir()
        daemon = Daemon(work, watch, model_dir, daemon={"workers": 1},
                        db=daemon_db or tmp_path / "shared.db")
        names = {f"scanner{n}/img{i:02d}.tif" for i in range(6)}
        for i, name in enumerate(sorted(names)):
            write_image(watch / name, seed=7000 + 100 * n + i)
        daemons.append(daemon)
        expected[os.path.realpath(watch)] = names
    try:
        for daemon in daemons:
            daemon.start().wait_ready()
        everything = set().union(*expected.values())
        final = wait_for(daemons[0].db, all_final(everything), 120, daemons[0])
        for daemon in daemons:
            assert daemon.stop() == 0, daemon.log()
    finally:
        for daemon in daemons:
            daemon.__exit__()
    # Once each, first attempt, never touched by the other daemon (no put-back-with-delay).
    assert all(v == [("done", 1, None)] for v in final.values()), final
    # The heartbeat carries the model and backend (the dashboard's header reads them there).
    (details,) = query(daemons[0].db, "SELECT details_json FROM heartbeat")[0]
    details = json.loads(details)
    assert details["backend"] == "torch-cpu" and details["precision"] == "fp32"
    assert details["device"] and len(details["model_digest"]) == 64
    assert details["architecture"] and isinstance(details["synthetic_demo"], bool)
    rows = query(daemons[0].db, "SELECT i.root_key, i.rel_path FROM images i")
    assert {(root, rel) for root, rel in rows} == {
        (root, rel) for root, names in expected.items() for rel in names}
    assert_audit_ok(daemons[0].db)
