"""`marginwatch db` and `marginwatch audit` through the real console script, in subprocesses."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from marginwatch.storage import Store
from marginwatch.storage.testing import sample_record
from PIL import Image
from sqlalchemy import text

MARGINWATCH = str(Path(sys.executable).with_name("marginwatch"))
T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)


def run(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([MARGINWATCH, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})}, **kwargs)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("marginwatch: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0]


def digest(*paths: Path) -> dict[str, str | None]:
    """SHA-256 per file; a missing and an empty file are the same (a read-only SQLite
    reader may create an empty -wal beside a WAL database: no frames, nothing written)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            if p.exists() and p.stat().st_size else None for p in paths}


@pytest.fixture(scope="module")
def populated(tmp_path_factory) -> dict:
    """Three images: positive (acknowledged), negative, and failed (not assessed)."""
    path = tmp_path_factory.mktemp("cli") / "results.db"
    with Store.open(path, upgrade=True) as store:
        model = store.register_model("c" * 64, "resnet18", {"synthetic_demo": True})
        ids = {}
        for name, minutes in (("pos.tif", 0), ("neg.tif", 10), ("bad.tif", 20)):
            ids[name] = store.record_discovery(
                "export", f"case7/{name}", 10, 1, "host:daemon",
                now=T0 + timedelta(minutes=minutes)).image_id
        job = store.claim_job("w", 60)
        alert = store.finish_job(job.job_id, "w", sample_record(model, decision=True)).alert_id
        store.acknowledge(alert, "Dr Who", note="re-excised")
        job = store.claim_job("w", 60)
        store.finish_job(job.job_id, "w", sample_record(model))
        job = store.claim_job("w", 60)
        store.fail_job(job.job_id, "w", "UnreadableImageError", "truncated TIFF", None, 1)
    files = [path, path.with_name(path.name + "-wal")]
    return {"db": path, "ids": ids, "files": files, "digest": digest(*files)}


def test_list_formats_and_filters(populated):
    db = str(populated["db"])
    table = run("audit", "list", "--db", db)
    assert table.returncode == 0, table.stderr
    assert "case7/pos.tif" in table.stdout and "research use" in table.stdout
    rows = list(csv.DictReader(io.StringIO(run("audit", "list", "--db", db, "--format", "csv")
                                           .stdout)))
    assert [r["rel_path"] for r in rows] == ["case7/pos.tif", "case7/neg.tif", "case7/bad.tif"]
    assert [r["state"] for r in rows] == ["done", "done", "failed"]
    positive = json.loads(run("audit", "list", "--db", db, "--format", "json",
                              "--decision", "positive").stdout)
    assert [r["rel_path"] for r in positive] == ["case7/pos.tif"]
    assert positive[0]["acknowledged_by"] == "Dr Who"
    failed = json.loads(run("audit", "list", "--db", db, "--format", "json",
                            "--kind", "not-assessed").stdout)
    assert [r["error_class"] for r in failed] == ["UnreadableImageError"]
    window = json.loads(run("audit", "list", "--db", db, "--format", "json", "--since",
                            "2026-05-01T08:05", "--until", "2026-05-01T08:15").stdout)
    assert [r["rel_path"] for r in window] == ["case7/neg.tif"]
    assert_one_line_error(run("audit", "list", "--db", db, "--since", "yesterday"), "--since")


def test_show_with_cam_and_export(populated, tmp_path):
    db = str(populated["db"])
    image_id = populated["ids"]["pos.tif"]
    cam = tmp_path / "cam.png"
    shown = run("audit", "show", image_id[:8], "--db", db, "--cam", str(cam))
    assert shown.returncode == 0, shown.stderr
    for needle in (image_id, "case7/pos.tif", "TUMOUR AT MARGIN", "acknowledged by Dr Who",
                   "image.assessed", "alert.acknowledged", "<- driving", "torch-cpu"):
        assert needle in shown.stdout
    with Image.open(cam) as picture:
        assert picture.size[0] > 0
    no_cam = run("audit", "show", populated["ids"]["bad.tif"], "--db", db, "--cam",
                 str(tmp_path / "x.png"))
    assert_one_line_error(no_cam, "no heatmap")
    assert_one_line_error(run("audit", "show", "ffffffff", "--db", db), "no such image")

    out = tmp_path / "export.json"
    assert run("audit", "export", "--db", db, "--format", "json", str(out)).returncode == 0
    body = json.loads(out.read_text())
    assert body["audit_chain"]["ok"] is True and len(body["images"]) == 3
    assert any(e["action"] == "image.failed" for e in body["audit_events"])
    out_csv = tmp_path / "export.csv"
    assert run("audit", "export", "--db", db, "--format", "csv", str(out_csv)).returncode == 0
    assert len(list(csv.DictReader(out_csv.open()))) == 3


def test_auditor_commands_wrote_nothing(populated):
    """Runs after the list/show/export tests above on the same file (pytest keeps file
    order): the database files are byte-identical to when the fixture closed them."""
    db, files = populated["db"], populated["files"]
    assert run("audit", "verify", "--db", str(db)).returncode == 0
    assert digest(*files) == populated["digest"]
    # And the connection the auditor uses refuses writes even when asked directly.
    code = ("from marginwatch.storage import Store\n"
            f"s = Store.open({str(db)!r}, readonly=True)\n"
            "c = s._engine.connect()\n"
            "c.exec_driver_sql(\"INSERT INTO heartbeat VALUES (1,'a','b','{}','x','x')\")\n")
    attempt = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60)
    assert attempt.returncode != 0 and "readonly" in attempt.stderr.lower()
    assert digest(*files) == populated["digest"]


def test_db_upgrade_and_current(tmp_path):
    db = tmp_path / "new.db"
    assert_one_line_error(run("db", "current", "--db", str(db)), str(db), "no such database")
    created = run("db", "upgrade", "--db", str(db))
    assert created.returncode == 0 and "upgraded from empty" in created.stdout
    current = run("db", "current", "--db", str(db))
    assert current.returncode == 0 and "up to date" in current.stdout
    # Default database: config.daemon.resolved_db_url() (state_dir from the environment).
    env = {"MARGINWATCH_DAEMON__STATE_DIR": str(tmp_path / "state")}
    assert run("db", "upgrade", env=env).returncode == 0
    assert (tmp_path / "state" / "marginwatch.db").exists()


def test_not_a_database(tmp_path):
    junk = tmp_path / "notes.db"
    junk.write_bytes(b"these are not the tables you are looking for\n" * 20)
    before = digest(junk)
    for args in (["audit", "list"], ["audit", "verify"], ["db", "upgrade"]):
        assert_one_line_error(run(*args, "--db", str(junk)), str(junk), "not an SQLite database")
    assert digest(junk) == before and not junk.with_name("notes.db-wal").exists()


def test_unreachable_server():
    url = "postgresql+psycopg://nobody:secret@127.0.0.1:1/none"
    result = run("audit", "list", "--db", url)
    assert_one_line_error(result, "127.0.0.1:1", "cannot connect")
    assert "secret" not in result.stderr


def test_schema_newer_than_code(tmp_path):
    db = tmp_path / "future.db"
    with Store.open(db, upgrade=True) as store, store._engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0999_from_the_future'"))
    before = digest(db)
    for args in (["audit", "list"], ["db", "upgrade"]):
        assert_one_line_error(run(*args, "--db", str(db)), str(db), "newer than this marginwatch")
    assert digest(db) == before


def test_locked_database(tmp_path):
    db = tmp_path / "busy.db"
    Store.open(db, upgrade=True).close()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sqlite3, sys\n"
         f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
         "c.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\nsys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        env = {"MARGINWATCH_DAEMON__DB_BUSY_TIMEOUT_SECONDS": "0.3"}
        assert_one_line_error(run("db", "upgrade", "--db", str(db), env=env), str(db), "locked")
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
        holder.stdout.close()


def _make_read_only(path: Path) -> bool:
    """chmod 0444; root ignores modes, so there use the immutable attribute (chattr +i)."""
    path.chmod(0o444)
    if os.geteuid() != 0:
        return True
    return subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode == 0


def test_read_only_file_opened_for_writing(tmp_path):
    db = tmp_path / "ro.db"
    Store.open(db, upgrade=True).close()
    if not _make_read_only(db):
        pytest.skip("running as root without chattr: cannot make a file read-only")
    try:
        before = digest(db)
        assert_one_line_error(run("db", "upgrade", "--db", str(db)), str(db), "read-only")
        listed = run("audit", "list", "--db", str(db))  # reading a read-only file is fine
        assert listed.returncode == 0, listed.stderr
        assert digest(db) == before
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(db)], capture_output=True)
