"""``marginwatch ack`` through the real CLI: who and when, audited; errors are one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from marginwatch.storage import Store
from marginwatch.storage.testing import sample_record

MARGINWATCH = str(Path(sys.executable).with_name("marginwatch"))
OWNER = "marginwatch-daemon@theatre:1"


def _ack(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MARGINWATCH, "ack", *args, "--db", str(db)],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "marginwatch.db"
    with Store.open(path, upgrade=True) as store:
        model_id = store.register_model("ab" * 32, "resnet18", {})
        store.record_discovery("/export", "case-03/scan-009.tif", 10, 1, OWNER)
        job = store.claim_job(OWNER, 60)
        assert job is not None
        outcome = store.finish_job(job.job_id, OWNER, sample_record(model_id, decision=True))
        assert outcome.alert_id == 1
    return path


def test_ack_records_who_and_when_and_is_audited(db: Path) -> None:
    done = _ack(db, "1", "--by", "Dr Smith", "--note", "frozen section sent")
    assert done.returncode == 0, done.stderr
    assert "alert 1" in done.stdout and "acknowledged by Dr Smith" in done.stdout
    assert "case-03/scan-009.tif" in done.stdout
    with Store.open(db, readonly=True) as store:
        assert store.open_alerts() == []
        (alert,) = store.alerts()
        assert alert.acknowledged_by == "Dr Smith" and alert.acknowledged_at is not None
        assert alert.ack_note == "frozen section sent"
        events = [e for e in store.audit_events() if e.action == "alert.acknowledged"]
        assert len(events) == 1 and events[0].actor == "Dr Smith"
        assert events[0].payload["alert_id"] == 1
        assert store.verify_audit().ok


def test_second_ack_is_refused(db: Path) -> None:
    assert _ack(db, "1", "--by", "Dr Smith").returncode == 0
    again = _ack(db, "1", "--by", "Nurse Jones")
    assert again.returncode == 2
    assert again.stderr.startswith("marginwatch: error: alert 1: already acknowledged by Dr Smith")
    assert "Traceback" not in again.stderr and again.stderr.count("\n") == 1
    with Store.open(db, readonly=True) as store:
        assert store.alerts()[0].acknowledged_by == "Dr Smith"


def test_unknown_alert(db: Path) -> None:
    done = _ack(db, "99", "--by", "Dr Smith")
    assert done.returncode == 2
    assert "alert 99: no such alert" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["1"], "--by"),  # who is required
        (["one", "--by", "x"], "valid integer"),  # not a number
        (["1", "--by", "  "], "must name the person"),
    ],
)
def test_bad_input(db: Path, args: list[str], expected: str) -> None:
    done = _ack(db, *args)
    assert done.returncode == 2
    assert expected in done.stderr and "Traceback" not in done.stderr


def test_missing_database(tmp_path: Path) -> None:
    done = _ack(tmp_path / "none.db", "1", "--by", "Dr Smith")
    assert done.returncode == 2
    assert "no such database file" in done.stderr
    assert not (tmp_path / "none.db").exists()
