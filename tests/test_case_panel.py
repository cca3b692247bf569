"""The dashboard's case panel: frames captured with rich at 80x24 and 160x48.

Real SQLite files filled through the Store API; assertions on the words a person reads
and on the colours of the faces (tumour red, not assessable amber, never green).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from marginwatch.daemon._case_panel import case_panel, face_rows
from marginwatch.daemon.dashboard import Source, render
from marginwatch.engine.config import CasesConfig
from marginwatch.storage import Placement, Store
from marginwatch.storage.testing import sample_record
from rich.console import Console

OWNER = "marginwatch-daemon@theatre:4242"
SIZES = [(80, 24), (160, 48)]
SCANS = [
    ("APEX_1.tif", "apex", False),
    ("LPL_1.tif", "left-posterolateral", True),
    ("RPL_1.tif", "right-posterolateral", "fail"),
    ("BASE_1.tif", "base", False),
    ("ANT_1.tif", "anterior", None),  # pending (last: the queue takes the oldest first)
]


def _fill(db: Path, folder: str = "Smith-J-1961", scans=SCANS) -> None:
    with Store.open(db, upgrade=True) as store:
        model = store.register_model("c0ffee" * 10 + "abcd", "resnet18", {"synthetic_demo": True})
        store.heartbeat(OWNER, "running")
        for i, (name, location, outcome) in enumerate(scans):
            store.record_discovery("/nonexistent", f"{folder}/{name}", 100 + i, 1, OWNER,
                                   placement=Placement(folder, location, "filename"))
            if outcome is None:
                continue
            job = store.claim_job(OWNER, 60)
            if outcome == "fail":
                store.fail_job(job.job_id, OWNER, "UnreadableImageError", "re-export", None, 1)
            else:
                store.finish_job(job.job_id, OWNER, sample_record(model, decision=outcome))


def _capture(db: Path, width: int, height: int, cases: CasesConfig | None = None) -> str:
    console = Console(width=width, height=height, record=True, file=open("/dev/null", "w"))
    with Source(str(db), cases=cases) as source:
        console.print(render(source.snapshot(), width, height), height=height)
    console.file.close()
    return console.export_text()


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_panel_shows_each_face_by_state(tmp_path, width, height):
    db = tmp_path / "m.db"
    _fill(db)
    frame = _capture(db, width, height)
    lines = frame.rstrip("\n").split("\n")
    assert len(lines) <= height and max(len(line) for line in lines) <= width
    assert "case (schematic of the specimen)" in frame
    assert "Smith-J-1961" in frame and "TUMOUR AT MARGIN" in frame and "last scan" in frame
    assert "5 image(s)" in frame and "1 tumour  1 not assess" in frame
    assert "LPL TUMOUR" in frame or "LEFT POSTEROLATERAL TUMOUR" in frame
    assert "RPL NOT ASSESS" in frame
    assert "APEX clear" in frame and "BASE clear" in frame
    assert "ANT PENDING" in frame or "ANTERIOR PENDING" in frame
    assert "POST —" in frame or "POSTERIOR not scanned" in frame
    # the alerts name their location
    assert "LEFT POSTEROLATERAL \u2014 TUMOUR" in frame
    assert "RIGHT POSTEROLATERAL \u2014 NOT ASSESSED" in frame


def test_display_id_hides_the_folder_name(tmp_path):
    db = tmp_path / "m.db"
    _fill(db)
    frame = _capture(db, 160, 48, CasesConfig(display="id"))
    with Store.open(db, readonly=True) as store:
        case_id = store.list_cases()[0].case_id
    assert "Smith-J-1961" not in frame
    assert f"case {case_id[:8]}" in frame
    assert "LPL_1.tif" in frame  # the image names stay


def _styles(renderable, width=80) -> dict[str, str]:
    """Text -> style of every styled segment the panel renders."""
    console = Console(width=width, file=open("/dev/null", "w"))
    out = {}
    for line in console.render_lines(renderable, console.options.update(width=width)):
        for seg in line:
            if seg.style is not None and seg.text.strip():
                out[seg.text.strip()] = str(seg.style)
    console.file.close()
    return out


def test_faces_are_coloured_by_state(tmp_path):
    db = tmp_path / "m.db"
    _fill(db)
    with Store.open(db, readonly=True) as store:
        detail = store.current_case()
    cfg = CasesConfig()
    panel = case_panel(detail, datetime.now(UTC), 76, vocabulary=cfg.locations,
                       label="x", abbreviations=cfg.abbreviations)
    styles = _styles(panel)
    assert "red" in styles["LPL TUMOUR p 0.91"]
    assert "dark_orange" in styles["RPL NOT ASSESSABLE"]
    assert "green" not in styles["RPL NOT ASSESSABLE"]
    assert "blue" in styles["ANTERIOR PENDING"]
    assert "green" in styles["APEX clear"]
    assert "dim" in styles["POSTERIOR not scanned"]


def test_reopened_case_and_issues_are_visible(tmp_path):
    db = tmp_path / "m.db"
    _fill(db, scans=SCANS[:1])
    with Store.open(db) as store:
        store.close_case("Smith-J-1961", "Dr Who")
        store.record_discovery("/nonexistent", "Smith-J-1961/late.tif", 9, 9, OWNER,
                               placement=Placement("Smith-J-1961", "unspecified", "sidecar",
                                                   "the sidecar is not valid JSON"))
    frame = _capture(db, 160, 48)
    assert "REOPENED (late image)" in frame
    assert "UNSPECIFIED PENDING" in frame  # an unspecified image gets its own cell
    assert "1 image(s) with a location problem" in frame


def test_no_case_yet(tmp_path):
    db = tmp_path / "m.db"
    with Store.open(db, upgrade=True):
        pass
    frame = _capture(db, 80, 24)
    assert "no case yet" in frame


def test_last_scan_time_and_closed_state(tmp_path):
    db = tmp_path / "m.db"
    _fill(db, scans=SCANS[:1])
    with Store.open(db) as store:
        store.close_idle_cases(60, OWNER, now=datetime.now(UTC) + timedelta(minutes=5))
        detail = store.current_case()
    cfg = CasesConfig()
    later = detail.case.last_image_at + timedelta(minutes=7)
    panel = case_panel(detail, later, 76, vocabulary=cfg.locations, label="x",
                       abbreviations=cfg.abbreviations)
    console = Console(width=80, record=True, file=open("/dev/null", "w"))
    console.print(panel)
    text = console.export_text()
    console.file.close()
    assert "closed (idle)" in text and "last scan 7 min ago" in text


def test_custom_vocabulary_gets_rows_of_its_own():
    rows = face_rows(["left", "right", "apex"], {"unspecified"})
    flat = [n for row in rows for n in row if n]
    assert flat == ["apex", "left", "right", "unspecified"]
