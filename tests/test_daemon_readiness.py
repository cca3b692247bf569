"""Readiness by format on real files, and the daemon at its shipped readiness defaults.

``structure_complete`` is checked on files written by tifffile (strips, tiles, BigTIFF,
a SubIFD pyramid) and Pillow (PNG, JPEG, BMP), whole and cut short. Then a real daemon
(``settle_seconds`` at its default, 0) with real writer processes: a file written
truncated, closed, then completed; a file renamed while it is being read; a file that
vanishes once it is ready. Each reaches a final state; none stays ``processing``.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from daemon_support import (
    FINAL_STATES,
    Daemon,
    all_final,
    image_bytes,
    query,
    wait_for,
)
from marginwatch.daemon.completeness import detect_format, structure_complete
from PIL import Image


def _tiff(**options) -> bytes:  # noqa: ANN003
    buffer = io.BytesIO()
    data = np.random.default_rng(0).integers(0, 255, (256, 320), dtype=np.uint8)
    with tifffile.TiffWriter(buffer, bigtiff=options.pop("bigtiff", False)) as tif:
        if options.pop("pyramid", False):
            tif.write(data, tile=(64, 64), subifds=1, compression="zlib")
            tif.write(data[::2, ::2], tile=(64, 64), subfiletype=1, compression="zlib")
        else:
            tif.write(data, **options)
    return buffer.getvalue()


def _pillow(fmt: str) -> bytes:
    buffer = io.BytesIO()
    rgb = np.random.default_rng(1).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(buffer, format=fmt)
    return buffer.getvalue()


KINDS = {
    "tiff-strips": (lambda: _tiff(rowsperstrip=16), "tiff"),
    "tiff-tiles-zlib": (lambda: _tiff(tile=(64, 64), compression="zlib"), "tiff"),
    "bigtiff": (lambda: _tiff(bigtiff=True, rowsperstrip=32), "tiff"),
    "tiff-pyramid": (lambda: _tiff(pyramid=True), "tiff"),
    "png": (lambda: _pillow("PNG"), "png"),
    "jpeg": (lambda: _pillow("JPEG"), "jpeg"),
    "bmp": (lambda: _pillow("BMP"), "bmp"),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_complete_files_pass_and_cut_files_do_not(tmp_path: Path, kind: str) -> None:
    make, fmt = KINDS[kind]
    data = make()
    assert detect_format(data[:16]) == fmt
    path = tmp_path / "image"
    path.write_bytes(data)
    assert structure_complete(path) is True
    # cut anywhere in the last three quarters (pixel data, or trailing IFDs / chunks)
    for cut in sorted({len(data) - 2, len(data) * 3 // 4, len(data) // 2, len(data) // 4, 9}):
        path.write_bytes(data[:cut])
        assert structure_complete(path) is False, (kind, cut, len(data))


def test_unknown_format_cannot_be_judged_and_missing_file_is_not_ready(tmp_path: Path) -> None:
    text = tmp_path / "notes.tif"
    text.write_bytes(b"not an image at all, just some text")
    assert structure_complete(text) is None
    assert structure_complete(tmp_path / "gone.tif") is False
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    assert structure_complete(empty) is False


# --- the daemon at its shipped readiness defaults, with real writer processes -----------

TRUNCATED_THEN_COMPLETED = r"""
import sys, time
data = open(sys.argv[1], "rb").read()
with open(sys.argv[2], "wb") as fh:  # half, then closed: a close-after-write event
    fh.write(data[: len(data) // 2])
time.sleep(float(sys.argv[3]))
with open(sys.argv[2], "ab") as fh:  # the rest, closed again
    fh.write(data[len(data) // 2 :])
"""

WHEN_RECORDED = r"""
import os, sqlite3, sys, time
db, rel, path = sys.argv[1:4]
deadline = time.monotonic() + 60
while time.monotonic() < deadline:  # the moment the daemon has recorded the file
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        (seen,) = con.execute("SELECT count(*) FROM images WHERE rel_path = ?", (rel,)).fetchone()
        con.close()
    except sqlite3.Error:
        seen = 0
    if seen:
        if len(sys.argv) > 4:
            os.rename(path, sys.argv[4])  # renamed while (or before) it is read
        else:
            os.unlink(path)  # vanishes after readiness
        sys.exit(0)
    time.sleep(0.002)
sys.exit(1)
"""


def _daemon(tmp_path: Path, model_dir: Path, **daemon: object) -> tuple[Daemon, Path]:
    watch = tmp_path / "export"
    (watch / "case").mkdir(parents=True)
    work = tmp_path / "state"
    work.mkdir()
    # the shipped readiness rules: no settle override, 1 s polls, 2 stable polls
    settings = {"settle_seconds": 0.0, "poll_interval_seconds": 1.0, "stable_polls": 2,
                "retry_delay_seconds": 0.5, **daemon}
    return Daemon(work, watch, model_dir, daemon=settings), watch


def _settled(db: Path) -> bool:
    """Nothing pending or processing: every recorded version is in a final state."""
    return not query(db, "SELECT count(*) FROM jobs WHERE state IN ('processing', 'pending')")[0][0]


@pytest.mark.slow
def test_truncated_then_completed_ends_with_the_complete_version_assessed(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    daemon, watch = _daemon(tmp_path, tiny_model_dir)
    source = tmp_path / "source.tif"
    source.write_bytes(image_bytes(5, side=160))
    target = watch / "case" / "slow.tif"
    with daemon:
        daemon.start().wait_ready()
        writer = subprocess.run([sys.executable, "-c", TRUNCATED_THEN_COMPLETED, str(source),
                                 str(target), "3.5"], timeout=60)
        assert writer.returncode == 0
        full = source.stat().st_size

        def complete_version_final(current: dict) -> bool:  # noqa: ANN001
            sizes = query(daemon.db, "SELECT size FROM images WHERE rel_path = 'case/slow.tif'")
            return (full,) in sizes and all_final({"case/slow.tif"})(current) and _settled(
                daemon.db)

        final = wait_for(daemon.db, complete_version_final, 60, daemon)
        rows = query(daemon.db, "SELECT i.size, j.state, j.error_class FROM images AS i "
                     "JOIN jobs AS j ON j.image_id = i.id ORDER BY i.first_seen")
        assert daemon.stop() == 0
    assert final
    complete = [r for r in rows if r[0] == source.stat().st_size]
    assert [r[1] for r in complete] == ["done"], rows  # the whole file, assessed once
    for size, state, error in rows:  # a half version, if recorded, ended visibly
        assert state in FINAL_STATES, rows
        if size != source.stat().st_size:
            # superseded once the writer wrote again; failed (truncated, with its reason)
            # when its retries ran out during the 3.5 s pause, as a file cut short for good
            assert state == "superseded" or (state == "failed" and error), rows


CHUNKED = r"""
import sys, time
data = open(sys.argv[1], "rb").read()
parts, pause = int(sys.argv[3]), float(sys.argv[4])
step = len(data) // parts + 1
for start in range(0, len(data), step):
    with open(sys.argv[2], "ab") as fh:  # a chunk, closed: each pause outlasts the settle
        fh.write(data[start : start + step])
    if start + step < len(data):
        time.sleep(pause)
"""


@pytest.mark.slow
def test_a_writer_pausing_longer_than_the_settle_time_gets_one_result_and_no_alert(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    # Each pause (2 s) outlasts the settle time (0.3 s) and the stable polls: every partial
    # version is recorded and read (and fails to decode) while the writer waits. Once it
    # writes again the partial version's job waits, not an attempt, and ends superseded.
    daemon, watch = _daemon(tmp_path, tiny_model_dir, settle_seconds=0.3,
                            poll_interval_seconds=0.2, stable_polls=2,
                            retry_delay_seconds=1.0, max_attempts=5)
    source = tmp_path / "source.tif"
    source.write_bytes(image_bytes(11, side=192))
    full = source.stat().st_size
    with daemon:
        daemon.start().wait_ready()
        writer = subprocess.run([sys.executable, "-c", CHUNKED, str(source),
                                 str(watch / "case" / "chunked.tif"), "3", "2.0"], timeout=60)
        assert writer.returncode == 0

        def complete_version_final(current: dict) -> bool:  # noqa: ANN001
            sizes = query(daemon.db, "SELECT size FROM images WHERE rel_path = 'case/chunked.tif'")
            return (full,) in sizes and all_final({"case/chunked.tif"})(current) and _settled(
                daemon.db)

        wait_for(daemon.db, complete_version_final, 60, daemon)
        rows = query(daemon.db, "SELECT i.size, j.state, j.error_class FROM images AS i "
                     "JOIN jobs AS j ON j.image_id = i.id ORDER BY i.first_seen, j.id")
        alerts = query(daemon.db, "SELECT kind, message FROM alerts WHERE kind = 'not-assessed'")
        actions = [a for (a,) in query(daemon.db, "SELECT action FROM audit_events")]
        assert daemon.stop() == 0
    assert [r for r in rows if r[1] == "done"] == [(full, "done", None)], rows  # one result
    assert all(state == "superseded" for size, state, _ in rows if size != full), rows
    assert not alerts, alerts
    assert "image.failed" not in actions
    assert len(rows) >= 2, rows  # a partial version was recorded: the case was exercised
    assert "image.superseded" in actions


@pytest.mark.slow
def test_renamed_while_read_and_vanished_after_ready_reach_final_states(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    daemon, watch = _daemon(tmp_path, tiny_model_dir, max_attempts=2)
    staging = tmp_path / "staging"
    staging.mkdir()
    with daemon:
        daemon.start().wait_ready()
        # renamed the moment the daemon recorded it: read under its old name or not at all
        moving = staging / "moving.tif"
        moving.write_bytes(image_bytes(7, side=192))
        mover = subprocess.Popen([sys.executable, "-c", WHEN_RECORDED, str(daemon.db),
                                  "case/moving.tif", str(watch / "case" / "moving.tif"),
                                  str(watch / "case" / "moved.tif")])
        os.rename(moving, watch / "case" / "moving.tif")
        assert mover.wait(60) == 0
        # deleted the moment it was recorded (after readiness, before or while read)
        gone = staging / "gone.tif"
        gone.write_bytes(image_bytes(8, side=192))
        deleter = subprocess.Popen([sys.executable, "-c", WHEN_RECORDED, str(daemon.db),
                                    "case/gone.tif", str(watch / "case" / "gone.tif")])
        os.rename(gone, watch / "case" / "gone.tif")
        assert deleter.wait(60) == 0
        names = {"case/moving.tif", "case/moved.tif", "case/gone.tif"}
        final = wait_for(daemon.db, lambda cur: all_final(names)(cur) and _settled(daemon.db),
                         60, daemon)
        states = dict(query(daemon.db, "SELECT i.rel_path, j.state FROM images AS i "
                            "JOIN jobs AS j ON j.image_id = i.id"))
        log = daemon.log()
        assert daemon.stop() == 0
    assert final
    assert set(states.values()) <= set(FINAL_STATES), states
    # the content was assessed once, under one of its names; the other name links to it
    assert sorted(states[n] for n in ("case/moving.tif", "case/moved.tif")) in (
        ["done", "duplicate"], ["done", "moved"], ["done", "failed"]), states
    assert states["case/gone.tif"] in ("done", "failed"), states  # read in time, or not
    assert "moving.tif" not in log and "gone.tif" not in log  # ids only in the log


@pytest.mark.slow
def test_a_case_folder_renamed_before_its_images_are_read_is_followed_without_alerts(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    daemon, watch = _daemon(tmp_path, tiny_model_dir, max_attempts=6)
    staging = tmp_path / "staging" / "caseA"
    staging.mkdir(parents=True)
    for seed, name in ((21, "x.tif"), (22, "y.tif")):
        (staging / name).write_bytes(image_bytes(seed, side=192))
    with daemon:
        daemon.start().wait_ready()
        # the folder is renamed the moment the daemon recorded one of its images
        mover = subprocess.Popen([sys.executable, "-c", WHEN_RECORDED, str(daemon.db),
                                  "caseA/x.tif", str(watch / "caseA"), str(watch / "caseB")])
        os.rename(staging, watch / "caseA")
        assert mover.wait(60) == 0
        names = {"caseB/x.tif", "caseB/y.tif"}
        wait_for(daemon.db, lambda cur: all_final(names)(cur) and _settled(daemon.db), 60,
                 daemon)
        rows = query(daemon.db, "SELECT i.rel_path, j.state FROM images AS i "
                     "JOIN jobs AS j ON j.image_id = i.id ORDER BY j.id")
        alerts = query(daemon.db, "SELECT message FROM alerts WHERE kind = 'not-assessed'")
        assert daemon.stop() == 0
    assert not alerts, (alerts, rows)
    assert all(state in ("done", "duplicate", "moved") for _, state in rows), rows
    for name in ("x.tif", "y.tif"):  # each image assessed once, under one of its names
        assert [s for rel, s in rows if rel.endswith(name)].count("done") == 1, rows
    assert ("caseA/x.tif", "moved") in rows or ("caseA/x.tif", "done") in rows, rows
