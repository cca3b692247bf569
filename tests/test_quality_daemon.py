"""End to end: the real daemon stops a blurred scan at the quality gate.

A clean and a blurred generator scan are copied into the export folder of a running
``marginwatch run`` (bundled demo model, CPU). The blurred one must end ``failed`` with
a not-assessed alert naming "out of focus: focus V < T" in the database and the audit
trail, and show that reason on a captured ``marginwatch dashboard --once`` frame; the
clean one is assessed with its measurements stored beside the prediction.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
from daemon_support import MARGINWATCH, Daemon, all_final, assert_audit_ok, query, wait_for
from marginwatch.models import demo_model_dir
from marginwatch.tools._degrade import degrade
from marginwatch.tools.synth import generate_image, write_image


def _scans(staging: Path) -> tuple[Path, Path]:
    image = generate_image(np.random.default_rng(21), "benign", kind="benign")
    clean = write_image(staging / "clean.tif", image)
    blurred = degrade(image.pixels, "blur", 1.0, np.random.default_rng(1))
    blur = write_image(staging / "blurred.tif", type(image)(**{**image.__dict__,
                                                               "pixels": blurred}))
    return clean, blur


def test_blurred_scan_ends_not_assessable_in_db_audit_and_dashboard(tmp_path: Path) -> None:
    watch, work, staging = tmp_path / "export", tmp_path / "state", tmp_path / "staging"
    for folder in (watch, work, staging):
        folder.mkdir()
    clean, blur = _scans(staging)
    daemon = Daemon(work, watch, demo_model_dir(), daemon={"rescan_seconds": 60.0})
    with daemon:
        daemon.start().wait_ready(timeout=120)
        (watch / "case-01").mkdir()
        (watch / "case-01" / "clean.tif").write_bytes(clean.read_bytes())
        (watch / "case-01" / "blurred.tif").write_bytes(blur.read_bytes())
        final = wait_for(daemon.db, all_final({"case-01/clean.tif", "case-01/blurred.tif"}),
                         timeout=240, daemon=daemon)
        assert daemon.stop() == 0
    assert final["case-01/clean.tif"][-1][0] == "done", daemon.log()
    state, attempts, error_class = final["case-01/blurred.tif"][-1]
    assert (state, attempts, error_class) == ("failed", 1, "QualityGateError"), daemon.log()

    # the database: job reason and the not-assessed alert, value against threshold
    (message,) = query(daemon.db, "SELECT j.error_message FROM jobs j JOIN images i "
                       "ON i.id = j.image_id WHERE i.rel_path = ?", ("case-01/blurred.tif",))[0]
    assert "not assessable: out of focus: focus " in message and " < " in message
    (alert,) = query(daemon.db, "SELECT message FROM alerts WHERE kind = 'not-assessed'")[0]
    assert "out of focus: focus " in alert
    # the clean scan's measurements stored with its prediction
    (quality_json,) = query(daemon.db, "SELECT quality_json FROM predictions")[0]
    stored = json.loads(quality_json)
    assert stored["passed"] is True
    focus = stored["measurements"]["focus"]
    assert focus["value"] >= focus["threshold"] and focus["bad"] == "below"
    # the audit trail: both outcomes, with the reason and the measurements
    payloads = {action: json.loads(p) for action, p in query(
        daemon.db, "SELECT action, payload_json FROM audit_events "
        "WHERE action IN ('image.assessed', 'image.failed')")}
    assert "out of focus: focus " in payloads["image.failed"]["message"]
    # the gated image keeps its whole measurement table, in the chain, like a prediction's
    gated = payloads["image.failed"]["quality"]
    assert gated["passed"] is False and gated["reason"].startswith("out of focus")
    blur = gated["measurements"]["focus"]
    assert blur["passed"] is False and blur["value"] < blur["threshold"]
    assert set(gated["measurements"]) == set(stored["measurements"])
    assert payloads["image.assessed"]["quality"]["passed"] is True
    assert payloads["image.assessed"]["quality"]["values"]["focus"] == focus["value"]
    assert_audit_ok(daemon.db)

    frame = subprocess.run(
        [MARGINWATCH, "dashboard", "--db", str(daemon.db), "--once", "--width", "160",
         "--height", "40"], capture_output=True, text=True, timeout=60,
    )
    assert frame.returncode == 0, frame.stderr
    assert "NOT ASSESSED" in frame.stdout
    assert "out of focus: focus " in frame.stdout, frame.stdout

    # `audit show`: the measurement table of both, each check against its threshold
    ids = dict(query(daemon.db, "SELECT rel_path, id FROM images"))
    shown = {}
    for rel in ("case-01/clean.tif", "case-01/blurred.tif"):
        done = subprocess.run([MARGINWATCH, "audit", "show", "--db", str(daemon.db), ids[rel]],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        shown[rel] = done.stdout
    assert "  quality       passed, " in shown["case-01/clean.tif"]
    assert re.search(r"^ +focus +[0-9.]+ +>= [0-9.]+ +ok$", shown["case-01/clean.tif"], re.M)
    assert "  quality       FAILED: out of focus: focus " in shown["case-01/blurred.tif"]
    assert re.search(r"^ +focus +[0-9.]+ +>= [0-9.]+ +FAILED$", shown["case-01/blurred.tif"],
                     re.M), shown["case-01/blurred.tif"]
