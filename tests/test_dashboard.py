"""The theatre console: frames from ``marginwatch dashboard --once`` and rich capture.

Databases are real SQLite files populated through the Store API (never hand SQL).
Assertions are on content (words a person reads), not on pixels or exact layout.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import tifffile
from marginwatch.daemon.dashboard import Bell, Snapshot, Source, live_loop, render
from marginwatch.engine.config import load_config
from marginwatch.storage import Store
from marginwatch.storage.testing import sample_record
from rich.console import Console

MARGINWATCH = str(Path(sys.executable).with_name("marginwatch"))
OWNER = "marginwatch-daemon@theatre:4242"
SIZES = [(80, 24), (160, 48)]


def _daemon_started(store: Store, *, synthetic: bool = True, status: str = "running",
                    now: datetime | None = None) -> int:
    model_id = store.register_model("c0ffee" * 10 + "abcd", "resnet18",
                                    {"synthetic_demo": synthetic})
    store.audit("daemon.start", OWNER, {
        "model_digest": "c0ffee" * 10 + "abcd", "architecture": "resnet18",
        "synthetic_demo": synthetic, "backend": "torch-cpu", "device": "cpu",
        "precision": "fp32", "model_id": model_id}, OWNER)
    store.heartbeat(OWNER, status, now=now)
    return model_id


def _assess(store: Store, model_id: int, rel_path: str, *, positive: bool,
            root: str = "/nonexistent-export") -> None:
    found = store.record_discovery(root, rel_path, 1000 + len(rel_path), 7, OWNER)
    assert found is not None
    job = store.claim_job(OWNER, 60)
    assert job is not None
    store.finish_job(job.job_id, OWNER, sample_record(model_id, decision=positive))


def _fail(store: Store, rel_path: str) -> None:
    store.record_discovery("/nonexistent-export", rel_path, 5, 5, OWNER)
    job = store.claim_job(OWNER, 60)
    assert job is not None
    store.fail_job(job.job_id, OWNER, "UnreadableImageError",
                   "not a TIFF, PNG, JPEG or BMP image; re-export the image", None, 1)


@pytest.fixture
def alerts_db(tmp_path: Path) -> Path:
    db = tmp_path / "alerts.db"
    with Store.open(db, upgrade=True) as store:
        model_id = _daemon_started(store)
        _assess(store, model_id, "case-07/scan-001.tif", positive=False)
        _assess(store, model_id, "case-07/scan-002.tif", positive=True)
        _fail(store, "case-07/scan-003.tif")
        _assess(store, model_id, "case-08/scan-004.tif", positive=True)
    return db


def _once(db: Path, width: int, height: int) -> str:
    done = subprocess.run(
        [MARGINWATCH, "dashboard", "--db", str(db), "--once", "--width", str(width),
         "--height", str(height)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _capture(db: Path, width: int, height: int, **kwargs: object) -> str:
    console = Console(width=width, height=height, record=True, file=open("/dev/null", "w"))
    with Source(str(db), **kwargs) as source:  # type: ignore[arg-type]
        console.print(render(source.snapshot(), width, height), height=height)
    console.file.close()
    return console.export_text()


def _fits(frame: str, width: int, height: int) -> None:
    lines = frame.rstrip("\n").split("\n")
    assert len(lines) <= height, f"{len(lines)} lines > {height}"
    assert max(len(line) for line in lines) <= width


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_alerts_of_both_kinds(alerts_db: Path, width: int, height: int) -> None:
    frame = _once(alerts_db, width, height)
    _fits(frame, width, height)
    assert "daemon running" in frame
    assert "SYNTHETIC DEMO MODEL" in frame and "not a diagnosis" in frame
    assert "resnet18 c0ffeec0" in frame and "torch-cpu/cpu" in frame
    assert "OPEN ALERTS (3)" in frame
    assert "TUMOUR" in frame and "NOT ASSESSED" in frame
    assert "case-08/scan-004.tif" in frame  # the newest alert, by name a person can act on
    assert "p=0.91" in frame
    if width >= 120:  # at 80 columns the room goes to the alert's location instead
        assert "(0,0)-(64,64)" in frame  # the region that drove it
    lines = frame.splitlines()
    newest = next(i for i, line in enumerate(lines) if "#3 " in line and "scan-004" in line)
    older = next(i for i, line in enumerate(lines) if "#1 " in line and "scan-002" in line)
    assert newest < older  # newest first
    assert "Grad-CAM" in frame and "\u2580" in frame  # the half-block picture
    assert "reachable" in frame  # the source file is not on this machine: says so
    assert "recent results" in frame and "clear" in frame
    assert "assessed 3" in frame and "positive 2" in frame and "failed 1" in frame
    assert "queue 0" in frame and "/min" in frame


def test_header_reads_model_and_backend_from_the_heartbeat(tmp_path: Path) -> None:
    """The heartbeat's details win; the daemon.start audit event is only a fallback."""
    db = tmp_path / "beat.db"
    with Store.open(db, upgrade=True) as store:
        _daemon_started(store)  # its audit event says resnet18 on torch-cpu, synthetic
        store.heartbeat(OWNER, "running", details={
            "model_digest": "feedbeef" * 8, "architecture": "resnet50", "synthetic_demo": False,
            "backend": "tensorrt", "device": "NVIDIA H100", "precision": "fp16", "in_flight": 0})
    frame = _capture(db, 160, 48)
    header = frame.splitlines()[0]
    assert "tensorrt/NVIDIA H100" in header
    assert "resnet50 feedbeef" in header
    assert "torch-cpu" not in header and "resnet18" not in header
    assert "SYNTHETIC DEMO MODEL" not in frame and "Outputs are for research use" in frame


def test_wide_frame_uses_the_room(alerts_db: Path) -> None:
    small = _capture(alerts_db, 80, 24)
    big = _capture(alerts_db, 160, 48)
    assert big.count("\u2580") > 2 * small.count("\u2580")
    assert "TUMOUR AT MARGIN" in big


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_empty_database(tmp_path: Path, width: int, height: int) -> None:
    db = tmp_path / "empty.db"
    Store.open(db, upgrade=True).close()
    frame = _capture(db, width, height)
    _fits(frame, width, height)
    assert "daemon: never seen" in frame
    assert "no open alerts" in frame and "no images yet" in frame
    assert "research use, not a diagnosis" in frame
    assert "SYNTHETIC" not in frame


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_no_database_yet(tmp_path: Path, width: int, height: int) -> None:
    db = tmp_path / "later" / "marginwatch.db"
    with Source(str(db)) as source:
        shot = source.snapshot()
        assert shot.db_problem is not None and "no such database file" in shot.db_problem
        frame = _once(db, width, height)
        _fits(frame, width, height)
        assert "DATABASE NOT READABLE" in frame and "no such database file" in frame
        assert not db.exists()  # read-only: never creates it
        db.parent.mkdir()  # the daemon makes its state_dir, then the database in it
        with Store.open(db, upgrade=True) as store:  # the daemon creates it later
            _daemon_started(store)
        assert source.snapshot().db_problem is None  # the same source picks it up


@pytest.mark.parametrize(("width", "height"), SIZES)
def test_stopped_and_silent_daemon(tmp_path: Path, width: int, height: int) -> None:
    db = tmp_path / "stopped.db"
    with Store.open(db, upgrade=True) as store:
        _daemon_started(store, synthetic=False, status="stopped")
    frame = _once(db, width, height)
    _fits(frame, width, height)
    assert "daemon STOPPED since" in frame
    assert "SYNTHETIC" not in frame and "research use, not a diagnosis" in frame
    # a "running" heartbeat that stopped beating: the daemon died without saying so
    with Store.open(db) as store:
        store.heartbeat(OWNER, "running", now=datetime.now(UTC) - timedelta(minutes=5))
    frame = _capture(db, width, height)
    assert "NOT RESPONDING since" in frame and "5m0" in frame


def test_acknowledged_alert_leaves_the_red_list(alerts_db: Path) -> None:
    with Store.open(alerts_db) as store:
        store.acknowledge(3, "Dr Who", "seen, frozen section sent")
    frame = _capture(alerts_db, 80, 24)
    assert "OPEN ALERTS (2)" in frame
    assert "#3 " not in frame.split("\u256d\u2500 newest")[0]


def test_bell_rings_once_per_new_alert(alerts_db: Path) -> None:
    bell = Bell()
    with Source(str(alerts_db)) as source:
        assert bell.new_alerts(source.snapshot()) == 0  # open at start-up: no bell
        with Store.open(alerts_db) as store:
            _fail(store, "case-09/scan-010.tif")
        assert bell.new_alerts(source.snapshot()) == 1
        assert bell.new_alerts(source.snapshot()) == 0


def test_region_thumbnail_when_the_source_is_reachable(tmp_path: Path) -> None:
    export = tmp_path / "export"
    rng = np.random.default_rng(3)
    path = export / "case-01" / "scan-001.tif"
    path.parent.mkdir(parents=True)
    tifffile.imwrite(path, rng.integers(0, 4000, size=(256, 256), dtype=np.uint16))
    db = tmp_path / "thumb.db"
    with Store.open(db, upgrade=True) as store:
        model_id = _daemon_started(store)
        _assess(store, model_id, "case-01/scan-001.tif", positive=True, root=str(export))
    frame = _capture(db, 120, 40)
    assert "| region" in frame and "not reachable" not in frame
    with Source(str(db)) as source:
        picture = source.snapshot().picture
    assert picture is not None and picture.region_rgb is not None
    assert picture.region_rgb.shape == (64, 64, 3)  # the driving tile's box, (H, W, C)


def test_the_tumour_picture_says_what_the_quality_gate_left_out(tmp_path: Path) -> None:
    from marginwatch.engine.quality import SHIPPED_THRESHOLDS, gate

    tiles = [{"focus": 400.0, "saturated_fraction": 0.0}] * 3 + [
        {"focus": 20.0, "saturated_fraction": 0.0}]
    report = gate({"tissue_fraction": 0.8, "saturated_fraction": 0.0, "signal_range": 0.3,
                   "void_fraction": 0.0, "seam_score": 3.0}, tiles, [1.0] * 4,
                  SHIPPED_THRESHOLDS)
    db = tmp_path / "quality.db"
    with Store.open(db, upgrade=True) as store:
        model_id = _daemon_started(store)
        found = store.record_discovery("/nonexistent-export", "case-01/scan-001.tif", 9, 7, OWNER)
        job = store.claim_job(OWNER, 60)
        assert found is not None and job is not None
        record = dataclasses.replace(sample_record(model_id, decision=True),
                                     quality=report.to_dict())
        store.finish_job(job.job_id, OWNER, record)
    frame = _capture(db, 120, 40)
    assert "quality passed, 3 of 4 tiles kept (1 out of focus)" in frame, frame


def test_frame_does_not_import_torch(alerts_db: Path) -> None:
    """The console stays light: rendering a frame (picture included) loads no torch."""
    code = (
        "import sys\n"
        "from marginwatch.daemon.dashboard import run_dashboard\n"
        f"run_dashboard(db={str(alerts_db)!r}, once=True, width=100, height=30)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('NO-TORCH-OK')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "NO-TORCH-OK" in done.stdout and "OPEN ALERTS" in done.stdout


def test_snapshot_render_is_pure(alerts_db: Path) -> None:
    """render() draws a hand-made snapshot too (no database needed)."""
    shot = Snapshot(now=datetime.now(UTC), db_location="x")
    console = Console(width=80, height=24, record=True, file=open("/dev/null", "w"))
    console.print(render(shot, 80, 24), height=24)
    console.file.close()
    assert "never seen" in console.export_text()


def test_half_blocks_draw_two_pixels_per_cell_in_runs() -> None:
    from marginwatch.daemon._dashboard_picture import half_blocks

    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[0::2] = (255, 0, 0)  # upper pixel of every cell red ...
    rgb[1::2] = (0, 0, 255)  # ... lower blue
    rgb[:, 3:] = (0, 255, 0)  # the right half green, top and bottom
    drawn = half_blocks(rgb, 6, 2)
    assert len(drawn.lines) == 2 and drawn.width == 6
    for line in drawn.lines:
        assert [(s.text, s.style.color.triplet, s.style.bgcolor.triplet) for s in line] == [
            ("\u2580" * 3, (255, 0, 0), (0, 0, 255)), ("\u2580" * 3, (0, 255, 0), (0, 255, 0))]
    wide = drawn.beside(half_blocks(rgb, 6, 2))
    assert wide.width == 13 and len(wide.lines) == 2
    console = Console(width=13, record=True, file=open("/dev/null", "w"))
    console.print(wide)
    console.file.close()
    assert console.export_text() == ("\u2580" * 6 + " " + "\u2580" * 6 + "\n") * 2


def test_live_loop_shows_each_commit_at_a_lowered_priority(tmp_path: Path) -> None:
    """The real loop on a real SQLite file: a burst of commits reaches the screen, and
    the loop's thread draws at the lowered priority (``dashboard.nice``), while the
    test's own thread keeps its priority."""
    db = tmp_path / "mw.db"
    with Store.open(db, upgrade=True) as store:
        model_id = _daemon_started(store)
    shown: list[tuple[float, str]] = []
    priorities: set[int] = set()
    own = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    class Recorder:  # stands in for rich.live.Live
        def __init__(self, renderable: object, console: Console, **_: object) -> None:
            self.console = console
            self.update(renderable)

        def __enter__(self) -> Recorder:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def update(self, renderable: object, refresh: bool = True) -> None:
            with self.console.capture() as capture:
                self.console.print(renderable)
            shown.append((time.monotonic(), capture.get()))
            priorities.add(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    stop = threading.Event()
    console = Console(width=160, height=48, force_terminal=True, color_system=None)
    config = load_config(None, environ={})
    source = Source(str(db))
    loop = threading.Thread(target=live_loop, args=(source, config, console, stop.is_set,
                                                    Recorder), daemon=True)
    loop.start()
    try:
        with Store.open(db) as store:
            for i in range(40):  # 80 commits (discovery + finish) as fast as they go
                _assess(store, model_id, f"case/burst{i:02d}.tif", positive=False)
            deadline = time.monotonic() + 10
            while "burst39" not in shown[-1][1] and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        stop.set()
        loop.join(10)
        source.close()
    assert "burst39" in shown[-1][1], "the last commit never reached the screen"
    assert priorities == {min(19, own + config.dashboard.nice)}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == own
