"""`marginwatch bench --quick --json OUT` through the real CLI: the plumbing, not the timings.

Speed and memory targets live in the benchmark's output (docs/architecture.md, Tests),
never in assertions: this test only checks that every section runs and the JSON report is
well formed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SECTIONS = ("forward", "assess", "daemon", "gradcam", "mosaic")
STAGES = {"read", "preprocess", "infer", "cam", "aggregate"}


def _marginwatch() -> list[str]:
    script = Path(sys.executable).with_name("marginwatch")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from marginwatch.daemon.cli import main; main()"]


@pytest.mark.slow
def test_bench_quick_writes_all_five_sections(tmp_path, tiny_model_dir):  # noqa: ANN001
    out = tmp_path / "bench.json"
    env = {**os.environ, "MARGINWATCH_BENCH_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [*_marginwatch(), "bench", "--quick", "--json", str(out), "--model", str(tiny_model_dir),
         "--files", "2", "--burst", "2", "--mosaic-px", "1024", "--region-px", "192"],
        capture_output=True, text=True, env=env, timeout=540,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert "partial" not in report
    assert report["inputs"]["region_px"] == 192  # whole scans of several model fields
    for name in SECTIONS:
        assert name in report, name
        assert "error" not in report[name], (name, report[name].get("error"))
        assert "skipped" not in report[name], name
    forward = report["forward"]["variants"][0]
    assert forward["best_per_tile"]["median"] > 0 and "1" in forward["batches"]
    assert set(report["assess"]["stages"]) == STAGES
    infer = report["assess"]["stages"]["infer"]
    assert infer["p95"] >= infer["median"] > 0
    daemon = report["daemon"]
    assert daemon["states"] == {"done": 4}
    assert daemon["series"]["observed"]["n"] == 2 and daemon["burst"]["images_per_second"] > 0
    assert daemon["series"]["observed"]["median"] >= daemon["series"]["stamped"]["median"] > 0
    assert daemon["settings"]["settle_seconds"] is None  # the shipped defaults, no override
    shown = daemon["series"]["commit_to_dashboard"]  # the real dashboard loop drew each one
    assert shown["n"] == 2 and shown["median"] > 0 and daemon["dashboard_frames"] >= 2
    gradcam = report["gradcam"]
    assert gradcam["tiles"] >= 1 and -1.0 <= gradcam["correlation"]["median"] <= 1.0
    mosaic = report["mosaic"]
    assert mosaic["size_px"] == 1024 and mosaic["tiles"] > 0 and mosaic["peak_rss_mib"] > 0
    machine = report["machine"]
    assert machine["cpu_cores"] >= 1 and len(machine["loadavg_start"]) == 3 and machine["torch"]
    statuses = {t["name"]: t["status"] for t in report["targets"]}
    assert len(statuses) == 9
    assert set(statuses.values()) <= {"pass", "miss", "n/a", "not measured"}
    assert "targets" in done.stdout and "load average" in done.stdout


def test_bench_refuses_unknown_section(tmp_path):  # noqa: ANN001
    done = subprocess.run([*_marginwatch(), "bench", "--sections", "forward,nope"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "nope" in done.stderr and "Traceback" not in done.stderr
