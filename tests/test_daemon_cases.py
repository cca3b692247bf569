"""End to end: the real daemon on a synthetic case with mixed locations, and bad input
(SQLite, and PostgreSQL when ``MARGINWATCH_TEST_PG_URL`` is set).

A synthetic specimen from ``write_dataset`` (locations in names and sidecars), a case of
bad sidecars and disagreeing locations, and an image directly in the export root: every
image is assessed (none lost, the daemon keeps running), each problem is recorded with
its reason, the case closes when idle and a late image reopens it, audited. Logs carry
ids only, never a case folder's name.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from daemon_support import (
    MARGINWATCH,
    Daemon,
    all_final,
    assert_audit_ok,
    wait_for,
    write_image,
)
from marginwatch.storage import Store
from marginwatch.tools.synth import write_dataset

BAD_CASE = "Doe-Jane-1970"


@pytest.fixture
def model_dir(tiny_model_dir) -> Path:  # noqa: ANN001
    return Path(tiny_model_dir)


def _bad_case(watch: Path) -> dict[str, str]:
    """Images whose location input is wrong in each way; the expected reason for each."""
    folder = watch / BAD_CASE
    expected = {
        "BASE_1.tif": "not valid JSON",
        "ANT_1.tif": "disagree: sidecar posterior, file name anterior",
        "scan_7.tif": "'left lobe', which is not one of",
    }
    sidecars = {"BASE_1.json": "{oops", "ANT_1.json": json.dumps({"location": "posterior"}),
                "scan_7.json": json.dumps({"location": "left lobe"}),
                "scan_8.json": json.dumps({"location": "RAL"})}
    folder.mkdir(parents=True)
    for name, body in sidecars.items():  # the sidecars first: they are there when read
        (folder / name).write_text(body)
    for i, name in enumerate([*expected, "scan_8.tif"]):
        write_image(folder / name, seed=100 + i)
    write_image(watch / "loose_RPL.tif", seed=200)
    return expected


def _case(db: Path | str, key: str) -> dict:
    done = subprocess.run([MARGINWATCH, "case", "show", key, "--json", "--db", str(db)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _wait_case(db: Path | str, key: str, check, timeout: float, daemon: Daemon) -> dict:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = _case(db, key)
        if check(body):
            return body
        assert daemon.alive(), daemon.log()
        time.sleep(0.3)
    raise AssertionError(f"case {key} never reached the state: {body}\n{daemon.log()}")


@pytest.mark.slow
def test_daemon_places_a_synthetic_case_and_records_bad_input(
    tmp_path: Path, model_dir: Path, daemon_db: str | None
) -> None:
    watch, work = tmp_path / "export", tmp_path / "state"
    watch.mkdir()
    work.mkdir()
    rows = write_dataset(watch, images=8, patients=1, tumour_fraction=0.25, size_px=128,
                         seed=3, workers=1)
    synthetic = {r.path for r in rows}
    bad = _bad_case(watch)
    daemon = Daemon(work, watch, model_dir, db=daemon_db)
    with daemon.config.open("a") as fh:
        fh.write("\n[cases]\nidle_close_seconds = 3.0\n")
    expected = synthetic | {f"{BAD_CASE}/{n}" for n in [*bad, "scan_8.tif"]} | {"loose_RPL.tif"}
    with daemon:
        daemon.start().wait_ready()
        wait_for(daemon.db, all_final(expected), timeout=120, daemon=daemon)

        case = _case(daemon.db, rows[0].patient_id)
        faces = {loc["location"] for loc in case["locations"]}
        assert faces == {"apex", "base", "left-posterolateral", "right-posterolateral",
                         "left-anterolateral", "right-anterolateral", "anterior", "posterior"}
        assert case["issues"] == 0 and case["image_count"] == len(case["images"]) == 8
        sources = {i["location_source"] for i in case["images"]}
        assert sources == {"filename", "sidecar"}
        assert all(i["state"] in ("tumour", "clear", "not-assessable") for i in case["images"])

        odd = _case(daemon.db, BAD_CASE)
        by_name = {Path(i["rel_path"]).name: i for i in odd["images"]}
        for name, reason in bad.items():
            assert by_name[name]["location"] == "unspecified"
            assert reason in by_name[name]["location_issue"], by_name[name]
            assert by_name[name]["state"] != "pending"  # assessed (or failed), never lost
        assert by_name["scan_8.tif"]["location"] == "right-anterolateral"
        assert by_name["scan_8.tif"]["location_issue"] is None
        assert odd["issues"] == 3
        with Store.open(daemon.db, readonly=True) as store:
            assert store.images_outside_cases() == 1
            loose = next(r for r in store.list_images() if r.rel_path == "loose_RPL.tif")
            assert loose.state in ("done", "failed")

        # idle: closed by the daemon, audited; a late image reopens it, audited
        _wait_case(daemon.db, BAD_CASE, lambda b: b["state"] == "closed", 30, daemon)
        write_image(watch / BAD_CASE / "late_APEX.tif", seed=300)
        body = _wait_case(daemon.db, BAD_CASE, lambda b: b["reopened"] == 1, 30, daemon)
        actions = [e["action"] for e in body["events"]]
        assert actions[:3] == ["case.opened", "case.closed", "case.reopened"]
        assert body["events"][1]["payload"]["reason"] == "idle"
        assert daemon.stop() == 0
    log = daemon.log()
    assert BAD_CASE not in log and rows[0].patient_id not in log  # ids only in the logs
    assert "loose_RPL" not in log
    assert_audit_ok(daemon.db)
