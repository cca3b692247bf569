"""Clinical records are as tamper-evident as the audit log.

Predictions, tiles, heatmaps and alerts are append-only (triggers, on SQLite and
PostgreSQL; an alert may only be acknowledged, once), and the audit events that record
them carry their digests: after someone drops the triggers and edits, deletes or
inserts a row, `marginwatch audit verify` (the real CLI) exits 1 naming that row. The
anchor kept by default catches a deleted newest event without ``--anchor``.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from marginwatch.engine.errors import StorageError
from marginwatch.storage import Store
from marginwatch.storage.testing import sample_record
from sqlalchemy import text

SQLITE3 = shutil.which("sqlite3") or "/usr/bin/sqlite3"
MARGINWATCH = str(Path(sys.executable).with_name("marginwatch"))
DROP = ("DROP TRIGGER predictions_no_update; DROP TRIGGER predictions_no_delete; "
        "DROP TRIGGER tiles_no_update; DROP TRIGGER tiles_no_delete; "
        "DROP TRIGGER heatmaps_no_update; DROP TRIGGER heatmaps_no_delete; "
        "DROP TRIGGER alerts_no_delete; DROP TRIGGER alerts_acknowledge_only; "
        "DROP TRIGGER audit_events_no_update; DROP TRIGGER audit_events_no_delete;")
needs_sqlite3 = pytest.mark.skipif(not Path(SQLITE3).exists(), reason="sqlite3 CLI not installed")


def _fill(store: Store) -> dict[str, int]:
    """Two assessed images (one positive, with an alert), one acknowledged alert."""
    model = store.register_model("d" * 64, "resnet18", {"synthetic_demo": True})
    ids = {}
    for i, decision in enumerate((True, False)):
        store.record_discovery("/export", f"case1/{i}.tif", 100 + i, 1, "test")
        job = store.claim_job("me:1", 60)
        assert job is not None
        outcome = store.finish_job(job.job_id, "me:1", sample_record(model, decision=decision))
        ids[f"prediction{i}"] = outcome.prediction_id
        if outcome.alert_id is not None:
            ids["alert"] = outcome.alert_id
    store.acknowledge(ids["alert"], "dr who", "seen")
    return ids


def test_triggers_guard_clinical_rows(db_url: str) -> None:
    with Store.open(db_url, upgrade=True) as store:
        ids = _fill(store)
        report = store.verify_audit()
        assert report.ok and report.rows_checked == 2 + 2 + 2 + 1, report
        refused = [
            "UPDATE predictions SET probability = 0.01, decision = false "
            f"WHERE id = {ids['prediction0']}",
            f"DELETE FROM predictions WHERE id = {ids['prediction1']}",
            "UPDATE tiles SET probability = 0.0",
            "DELETE FROM tiles",
            "UPDATE heatmaps SET scale = 1.0",
            "DELETE FROM heatmaps",
            "DELETE FROM alerts",
            f"UPDATE alerts SET acknowledged_by = 'mallory' WHERE id = {ids['alert']}",  # twice
            f"UPDATE alerts SET message = 'nothing' WHERE id = {ids['alert']}",
        ]
        for statement in refused:
            with pytest.raises(StorageError, match="append-only"), store._write() as session:
                session.execute(text(statement))
        assert store.verify_audit().ok


def _verify(db: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MARGINWATCH, "audit", "verify", "--db", str(db), *extra],
                          capture_output=True, text=True, timeout=120)


def _sql(db: Path, statement: str) -> None:
    out = subprocess.run([SQLITE3, str(db), statement], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr


@pytest.fixture
def filled(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    db = tmp_path / "m.db"
    with Store.open(db, upgrade=True) as store:
        ids = _fill(store)
        store.audit("test.later", "x", {}, "test")
    return db, ids


@needs_sqlite3
@pytest.mark.parametrize(
    ("attack", "row", "why"),
    [
        ("UPDATE predictions SET probability = 0.01, decision = 0 WHERE id = {prediction0}",
         "predictions/{prediction0}", "edited after it was recorded"),
        ("DELETE FROM tiles WHERE prediction_id = {prediction1} AND idx = 2",
         "tiles/{prediction1}", "edited after it was recorded"),
        ("DELETE FROM heatmaps WHERE prediction_id = {prediction1}",
         "heatmaps/{prediction1}", "is gone (deleted)"),
        ("UPDATE alerts SET acknowledged_by = 'someone else' WHERE id = {alert}",
         "alerts/{alert}", "edited after it was recorded"),
        ("INSERT INTO alerts (kind, image_id, prediction_id, job_id, message, raised_at) "
         "SELECT kind, image_id, prediction_id, job_id, 'forged', raised_at FROM alerts "
         "WHERE id = {alert}", "alerts/{next_alert}", "no audit event records this row"),
    ],
    ids=["edit-prediction", "delete-tile", "delete-heatmap", "edit-ack", "insert-alert"],
)
def test_verify_names_the_tampered_row(filled, attack: str, row: str, why: str) -> None:
    db, ids = filled
    names = {**ids, "next_alert": ids["alert"] + 1}
    _sql(db, DROP + attack.format(**names))
    out = _verify(db)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"clinical record {row.format(**names)} DISAGREES" in out.stdout, out.stdout
    assert why in out.stdout
    assert "Traceback" not in out.stderr


@needs_sqlite3
def test_show_prints_negative_but_verify_catches_it(filled) -> None:
    """The issue's attack: the row says negative while the audit event says positive."""
    db, ids = filled
    _sql(db, DROP + f"UPDATE predictions SET probability=0.01, decision=0 "
         f"WHERE id = {ids['prediction0']}")
    out = _verify(db)
    assert out.returncode == 1 and f"predictions/{ids['prediction0']}" in out.stdout


@needs_sqlite3
def test_deleted_newest_event_is_caught_by_the_default_anchor(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    with Store.open(db, upgrade=True) as store:
        store.keep_anchor(store.default_anchor_path(tmp_path), every_events=100)
        _fill(store)
    anchor = tmp_path / "m.db.anchor.json"
    assert anchor.exists()  # written at close although fewer than 100 events were added
    assert _verify(db).returncode == 0
    _sql(db, DROP + "DELETE FROM audit_events WHERE seq = (SELECT max(seq) FROM audit_events)")
    out = _verify(db)  # no --anchor: the kept one is used
    assert out.returncode == 1, out.stdout
    assert "tail truncated" in out.stdout


def test_keeper_refuses_to_overwrite_evidence(tmp_path: Path) -> None:
    from marginwatch.engine.errors import AuditChainError
    from marginwatch.storage import AuditAnchor

    db = tmp_path / "m.db"
    anchor = tmp_path / "head.json"
    with Store.open(db, upgrade=True) as store:
        for i in range(3):
            store.audit("test.event", i, {}, "test")
    AuditAnchor(7, "ab" * 32).write(anchor)  # a head this chain does not hold
    with Store.open(db) as store, pytest.raises(AuditChainError, match="seq 7"):
        store.keep_anchor(anchor, 1)
    assert AuditAnchor.read(anchor).seq == 7


def test_anchor_advances_every_n_events(tmp_path: Path) -> None:
    from marginwatch.storage import AuditAnchor

    anchor = tmp_path / "head.json"
    with Store.open(tmp_path / "m.db", upgrade=True) as store:
        store.audit("test.event", 0, {}, "test")
        store.keep_anchor(anchor, every_events=5)  # written at once: the head so far
        start = AuditAnchor.read(anchor).seq
        for i in range(4):
            store.audit("test.event", i, {}, "test")
        assert AuditAnchor.read(anchor).seq == start
        store.audit("test.event", 5, {}, "test")
        assert AuditAnchor.read(anchor).seq == start + 5
    with sqlite3.connect(tmp_path / "m.db") as conn:
        assert conn.execute("SELECT max(seq) FROM audit_events").fetchone()[0] == start + 5


def test_ground_truth_is_covered(db_url: str) -> None:
    """Ground truth: corrected only by an import (revision + 1), never deleted; an edit
    made around the triggers is named by verify."""
    from marginwatch.storage.records import TruthEntry

    with Store.open(db_url, upgrade=True) as store:
        _fill(store)
        image = store.list_images()[0].image_id
        for status in ("tumour", "clear"):  # recorded, then corrected
            store.import_truth([TruthEntry(1, "case1/0.tif", (image,), status, "dr path")],
                               source_sha256="e" * 64, source_name="truth.csv", actor="test")
        assert store.verify_audit().ok
        for statement in (
            "DELETE FROM ground_truth",
            "UPDATE ground_truth SET status = 'tumour'",  # same revision: not a correction
        ):
            with pytest.raises(StorageError, match="append-only"), store._write() as session:
                session.execute(text(statement))
        # around the trigger: a forged "correction" that bumps the revision itself
        with store._write() as session:
            session.execute(text("UPDATE ground_truth SET status = 'tumour', "
                                 "revision = revision + 1"))
        report = store.verify_audit()
    assert not report.ok and report.bad_row == f"ground_truth/{image}", report
