"""``marginwatch demo --duration`` end to end: real daemon, simulated scanner, real database."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from marginwatch.daemon._scanner import BROKEN_AT, IMAGES_PER_CASE, SimulatedScanner, plan
from marginwatch.storage import Store

MARGINWATCH = str(Path(sys.executable).with_name("marginwatch"))


def test_scanner_writes_whole_files_under_a_temp_name_then_renames(tmp_path: Path) -> None:
    with SimulatedScanner(tmp_path, interval_seconds=0.1, size_px=128, max_files=4) as scanner:
        deadline = time.monotonic() + 60
        while len(scanner.files()) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert scanner.error is None
    kinds = [f.kind for f in scanner.files()]
    assert kinds == [plan(i) for i in range(4)] and kinds[BROKEN_AT] == "broken"
    names = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    images = [n for n in names if not n.endswith(".json")]
    assert images == sorted(f.rel_path for f in scanner.files())  # no temp names left behind
    assert all(name.startswith("case-01/scan-") for name in names)
    # a specimen scanned face by face: the location in the name, every second in a sidecar
    assert [f.rel_path for f in scanner.files()] == [
        "case-01/scan-001_APEX.tif", "case-01/scan-002_BASE.tif", "case-01/scan-003_LPL.tif",
        "case-01/scan-004_RPL.tif"]
    assert [n for n in names if n.endswith(".json")] == [
        "case-01/scan-002_BASE.json", "case-01/scan-004_RPL.json"]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_demo_duration_assesses_and_alerts(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("MARGINWATCH_CONFIG", None)
    started = time.monotonic()
    done = subprocess.run(
        [MARGINWATCH, "demo", "--duration", "14", "--interval", "1.5", "--root", str(root)],
        capture_output=True, text=True, timeout=220, env=env, stdin=subprocess.DEVNULL,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "marginwatch demo summary" in out and "files written" in out
    counted = re.search(r"(\d+) of (\d+) tumour scans raised a tumour alert; "
                      r"(\d+) of (\d+) benign scans did", out)
    assert counted, out
    assert "SYNTHETIC DEMO MODEL" in out or "models/demo" in out
    db = root / "state" / "marginwatch.db"
    with Store.open(db, readonly=True) as store:
        rows = store.list_images()
        alerts = store.alerts()
        beat = store.read_heartbeat()
    states = [r.state for r in rows]
    assert states.count("done") >= 3, states
    assert "failed" in states  # the broken file: not assessed, never negative
    kinds = {a.kind for a in alerts}
    assert "not-assessed" in kinds
    # the truth line counts what the database holds, by the scanner's plan of each file
    tumour_alerts = {a.rel_path for a in alerts if a.kind == "tumour-at-margin"}
    done = [r.rel_path for r in rows if r.state == "done"]

    def truth(rel: str) -> str:  # case-CC/scan-SSS_LOC.tif: the scanner's index, then plan()
        case, name = rel.split("/")
        scan = int(name.split("-")[1].split("_")[0])
        return plan((int(case.split("-")[1]) - 1) * IMAGES_PER_CASE + scan - 1)

    truth_of = {rel: truth(rel) for rel in done}
    expected = []
    for kind in ("tumour", "benign"):
        scans = [rel for rel in done if truth_of[rel] == kind]
        expected += [sum(rel in tumour_alerts for rel in scans), len(scans)]
    assert [int(g) for g in counted.groups()] == expected, out
    assert beat is not None and beat.status == "stopped"  # the daemon stopped cleanly
    assert "daemon exit:    0" in out
    # nothing left running: no daemon process watching this demo folder
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(root / "state" / "marginwatch.toml") not in ps
    print(out, f"(demo test took {elapsed:.0f} s)")
