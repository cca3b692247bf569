"""Synthetic cases carry margin locations in names and sidecars that the daemon reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from marginwatch.daemon.locations import LocationRules, resolve
from marginwatch.tools._synth_cases import SCAN_ORDER, location_of, scan_name
from marginwatch.tools.synth import write_dataset

CLI = Path(sys.executable).with_name("marginwatch")


def test_each_case_is_scanned_face_by_face(tmp_path: Path) -> None:
    rows = write_dataset(tmp_path, images=10, patients=1, size_px=128, seed=4, workers=1)
    rules = LocationRules.from_config()
    root = os.path.realpath(tmp_path)
    scans = sorted(r.path for r in rows)
    assert [resolve(root, p, rules).location for p in scans] == [
        location_of(k) for k in range(1, 11)]
    assert [location_of(k) for k in range(1, 9)] == list(SCAN_ORDER)  # all eight faces
    for k, path in enumerate(scans, start=1):
        placement = resolve(root, path, rules)
        assert placement.issue is None and placement.case_folder == "dev-01"
        sidecar = (tmp_path / path).with_suffix(".json")
        assert sidecar.exists() == (k % 2 == 0)
        if sidecar.exists():
            body = json.loads(sidecar.read_text())
            assert body["location"] == location_of(k) and body["synthetic"] is True
            assert placement.source == "sidecar"
        else:
            assert placement.source == "filename"
    assert scan_name("dev-01", 3) == "dev-01/dev-01-003_LPL.tif"


def test_synth_command_writes_sidecars(tmp_path: Path) -> None:
    done = subprocess.run(
        [CLI, "synth", str(tmp_path), "--images", "4", "--patients", "1", "--size-px", "128",
         "--workers", "1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    names = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.json"))
    assert names == ["dev-01/dev-01-002_BASE.json", "dev-01/dev-01-004_RPL.json"]
