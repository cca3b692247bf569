"""The Store API the daemon and dashboard use, on SQLite and (when set) PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from marginwatch.engine.errors import (
    ConflictError,
    DatabaseUnavailableError,
    NotFoundError,
    StorageError,
)
from marginwatch.storage import AssessmentRecord, Store
from marginwatch.storage.models import Alert, Heatmap, Prediction, Tile
from marginwatch.storage.testing import (
    sample_heatmap_png,
    sample_record,
)
from sqlalchemy import func, select

T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)


@pytest.fixture
def model_id(store):
    return store.register_model("d" * 64, "resnet18", {"threshold": 0.5, "synthetic_demo": True})


def _discover(store, name="case1/a.tif", size=100, mtime_ns=1, now=T0):
    found = store.record_discovery("export", name, size, mtime_ns, "host:daemon", now=now)
    assert found is not None
    return found


def _count(store, model) -> int:
    with store._read() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_register_model_is_idempotent_and_audited_once(store, model_id):
    again = store.register_model("d" * 64, "resnet18", {"threshold": 0.5})
    assert again == model_id
    actions = [e.action for e in store.audit_events()]
    assert actions.count("model.registered") == 1


def test_discovery_once_per_file_version(store):
    first = _discover(store)
    assert store.record_discovery("export", "case1/a.tif", 100, 1, "x", now=T0) is None
    changed = store.record_discovery("export", "case1/a.tif", 120, 2, "x", now=T0)
    assert changed is not None and changed.image_id != first.image_id
    assert store.queue_depth() == 1  # the unread first version is superseded, not queued
    discovered = [e for e in store.audit_events() if e.action == "image.discovered"]
    assert len(discovered) == 2
    assert all("case1" not in str(e.payload) for e in discovered)  # no paths in the audit log


def test_claim_lease_requeue_and_retry(store, model_id):
    found = _discover(store)
    job = store.claim_job("w1", lease_seconds=60, now=T0)
    assert (job.job_id, job.image_id, job.rel_path, job.attempts) == (
        found.job_id, found.image_id, "case1/a.tif", 1)
    assert store.claim_job("w2", 60, now=T0) is None
    assert store.requeue_expired(now=T0 + timedelta(seconds=30)) == 0
    assert store.requeue_expired(now=T0 + timedelta(seconds=61)) == 1
    with pytest.raises(ConflictError, match="not leased"):
        store.finish_job(job.job_id, "w1", sample_record(model_id))
    again = store.claim_job("w2", 60, now=T0 + timedelta(seconds=62))
    assert again.job_id == job.job_id and again.attempts == 2
    retry = store.fail_job(again.job_id, "w2", "UnreadableImageError", "truncated", 5.0,
                           max_attempts=3, now=T0 + timedelta(seconds=63))
    assert retry.state == "pending" and retry.alert_id is None
    assert store.claim_job("w3", 60, now=T0 + timedelta(seconds=64)) is None  # not_before
    third = store.claim_job("w3", 60, now=T0 + timedelta(seconds=69))
    assert third.attempts == 3
    final = store.fail_job(third.job_id, "w3", "UnreadableImageError", "truncated", 5.0,
                           max_attempts=3, now=T0 + timedelta(seconds=70))
    assert final.state == "failed" and final.alert_id is not None
    (alert,) = store.open_alerts()
    assert alert.kind == "not-assessed" and alert.job_id == job.job_id
    (row,) = store.recent_results(5)
    assert (row.state, row.error_class, row.alert_kind) == ("failed", "UnreadableImageError",
                                                            "not-assessed")
    assert store.queue_depth() == 0
    assert store.verify_audit().ok


def test_claim_restricted_to_one_root(store):
    store.record_discovery("other-scanner", "x.tif", 1, 1, "host:b", now=T0)
    assert store.claim_job("w1", 60, now=T0, root_key="export") is None
    _discover(store)
    job = store.claim_job("w1", 60, now=T0, root_key="export")
    assert job.root_key == "export" and job.rel_path == "case1/a.tif"


def test_a_discovery_can_lease_its_job_in_the_same_transaction(store):
    """``lease_to``: the new job is processing, leased to the owner, one attempt spent,
    exactly as claim_job would leave it; nothing is left for a second claim."""
    found = store.record_discovery("export", "case1/a.tif", 1, 1, "host:a", now=T0,
                                   lease_to="w1", lease_seconds=60)
    assert found is not None and found.claimed is not None
    claimed = found.claimed
    assert (claimed.job_id, claimed.image_id, claimed.rel_path) == (
        found.job_id, found.image_id, "case1/a.tif")
    assert claimed.attempts == 1 and claimed.lease_expires_at == T0 + timedelta(seconds=60)
    assert store.claim_job("w2", 60, now=T0) is None  # already leased
    store.extend_lease(claimed.job_id, "w1", 60, now=T0)  # held by w1, as after a claim
    with pytest.raises(ConflictError):
        store.extend_lease(claimed.job_id, "w2", 60, now=T0)
    # without lease_to the job stays pending for the next claim
    plain = store.record_discovery("export", "case1/b.tif", 1, 1, "host:a", now=T0)
    assert plain is not None and plain.claimed is None
    assert store.claim_job("w2", 60, now=T0).job_id == plain.job_id
    assert store.verify_audit().ok


def test_sqlite_writers_take_the_lock_at_begin(tmp_path):
    """BEGIN IMMEDIATE (not pysqlite's deferred BEGIN): a second writer is refused at once."""
    import sqlite3

    with Store.open(tmp_path / "m.db", upgrade=True) as store, store._write() as session:
        session.connection()  # the transaction has begun, nothing written yet
        other = sqlite3.connect(tmp_path / "m.db", timeout=0, isolation_level=None)
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
            assert other.execute("SELECT count(*) FROM audit_events").fetchone() == (0,)
        finally:
            other.close()


def test_requeue_expired_fails_a_job_that_keeps_killing_workers(store):
    _discover(store)
    store.claim_job("w1", 1, now=T0)
    assert store.requeue_expired(now=T0 + timedelta(seconds=2), max_attempts=1) == 1
    (row,) = store.recent_results(1)
    assert row.state == "failed" and row.error_class == "LeaseExpired"


def test_finish_job_records_everything(store, model_id):
    found = _discover(store)
    job = store.claim_job("w1", 60, now=T0)
    outcome = store.finish_job(job.job_id, "w1", sample_record(model_id, decision=True),
                               now=T0 + timedelta(seconds=1))
    assert outcome.alert_id is not None
    assert _count(store, Prediction) == 1 and _count(store, Tile) == 3
    assert _count(store, Heatmap) == 1
    detail = store.latest_alert_detail()
    assert detail.alert.image_id == found.image_id and detail.decision is True
    assert len(detail.tiles) == 3 and detail.heatmap_png.startswith(b"\x89PNG")
    full = store.image_detail(found.image_id[:8])
    assert full.row.state == "done" and full.shape == (256, 256, 3)
    assert [e.action for e in full.events] == ["image.discovered", "image.assessed",
                                               "alert.raised"]
    assert full.timings["infer"] == pytest.approx(0.1)
    counters = store.counters(T0 - timedelta(hours=1))
    assert (counters.discovered, counters.assessed, counters.positive, counters.open_alerts) == (
        1, 1, 1, 1)


def test_negative_result_raises_no_alert(store, model_id):
    _discover(store)
    job = store.claim_job("w1", 60, now=T0)
    assert store.finish_job(job.job_id, "w1", sample_record(model_id)).alert_id is None
    assert store.open_alerts() == []


def test_duplicate_is_linked_not_rerun(store, model_id):
    _discover(store, "a.tif")
    _discover(store, "copy-of-a.tif")
    first = store.claim_job("w1", 60, now=T0)
    done = store.finish_job(first.job_id, "w1", sample_record(model_id, sha256="e" * 64))
    assert store.find_assessment("e" * 64, model_id) == done.prediction_id
    assert store.find_assessment("e" * 64, model_id + 1) is None
    second = store.claim_job("w1", 60, now=T0)
    store.mark_duplicate(second.job_id, "w1", "e" * 64, done.prediction_id)
    rows = {r.rel_path: r for r in store.list_images()}
    assert rows["copy-of-a.tif"].state == "duplicate"
    assert rows["copy-of-a.tif"].prediction_id == done.prediction_id
    assert _count(store, Prediction) == 1


def test_acknowledge(store, model_id):
    _discover(store)
    job = store.claim_job("w1", 60, now=T0)
    alert_id = store.finish_job(job.job_id, "w1", sample_record(model_id, decision=True)).alert_id
    acked = store.acknowledge(alert_id, "Dr Who", note="frozen section requested")
    assert acked.acknowledged and acked.acknowledged_by == "Dr Who"
    assert store.open_alerts() == []
    with pytest.raises(ConflictError, match="already acknowledged by Dr Who"):
        store.acknowledge(alert_id, "someone else")
    with pytest.raises(NotFoundError):
        store.acknowledge(alert_id + 100, "Dr Who")
    event = store.audit_events()[-1]
    assert (event.action, event.actor, event.payload["note"]) == (
        "alert.acknowledged", "Dr Who", "frozen section requested")


def test_heartbeat(store):
    assert store.read_heartbeat() is None
    store.heartbeat("host:1", "starting", now=T0)
    store.heartbeat("host:1", "running", details={"queue": 3}, now=T0 + timedelta(seconds=2))
    beat = store.read_heartbeat()
    assert (beat.status, beat.details, beat.started_at, beat.beat_at) == (
        "running", {"queue": 3}, T0, T0 + timedelta(seconds=2))
    assert beat.age_seconds(T0 + timedelta(seconds=5)) == pytest.approx(3.0)


def test_readonly_store_cannot_write(store, db_url, model_id):
    _discover(store)
    with Store.open(db_url, readonly=True) as reader:
        assert len(reader.list_images()) == 1
        with pytest.raises(DatabaseUnavailableError, match="read-only"):
            reader.audit("config.loaded", "x", {}, "auditor")
        # Even SQL that bypasses the Store's own guard is refused by the database.
        with pytest.raises(StorageError), reader._translate(), reader._engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM heartbeat")
        with pytest.raises(ValueError):
            Store.open(db_url, readonly=True, upgrade=True)


def test_append_only_triggers_refuse_update_and_delete(store):
    store.audit("daemon.start", "host", {"pid": 1}, "host:daemon")
    for statement in ("UPDATE audit_events SET actor = 'mallory'", "DELETE FROM audit_events"):
        with pytest.raises(StorageError, match="append-only"), store._translate():
            with store._engine.begin() as conn:
                conn.exec_driver_sql(statement)
    assert store.verify_audit().ok


def test_concurrent_writers_do_not_fork_the_chain(db_url, store, model_id):
    """Four threads, each with its own Store (own connections), append and claim at once."""
    for i in range(8):
        _discover(store, f"c/{i}.tif")
    errors: list[BaseException] = []
    claimed: list[int] = []

    def work(name: str) -> None:
        try:
            with Store.open(db_url) as mine:
                for i in range(6):
                    mine.audit("test.event", name, {"i": i}, name)
                    job = mine.claim_job(name, 60)
                    if job is not None:
                        claimed.append(job.job_id)
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"t{k}",)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 8  # no double claims
    report = store.verify_audit()
    assert report.ok, report
    assert report.events == 1 + 8 + 24


def test_assessment_record_from_engine_like_object(model_id):
    import numpy as np

    class Tile:
        def __init__(self, box, p):
            self.box, self.probability = box, p

    class FakeAssessment:  # the engine's Assessment, duck-typed (storage imports no torch)
        probability, raw_probability, decision, threshold = 0.7, 0.75, True, 0.5
        tiles = [Tile((0, 0, 32, 32), 0.7)]
        driving_tile = 0
        heatmap = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
        heatmap_scale = 16.0
        timings = {"read": 0.01}
        sha256 = "f" * 64
        shape = (128, 128, 1)
        um_per_px = 1.0
        um_per_px_source = "profile-default"
        profile = "grey"
        backend, device = "torch-cpu", "cpu"

    png = sample_heatmap_png()
    record = AssessmentRecord.from_assessment(FakeAssessment(), model_id=model_id,
                                              precision="fp32", heatmap_png=png)
    assert record.heatmap_png == png and record.heatmap_scale == 16.0  # stored as given
    assert record.tiles[0].box == (0, 0, 32, 32)
    bare = AssessmentRecord.from_assessment(FakeAssessment(), model_id=model_id)
    assert bare.heatmap_png is None and bare.heatmap_scale is None
    assert record.shape == (128, 128, 1) and record.decision is True


def test_alert_rows_are_plain_dataclasses(store, model_id):
    _discover(store)
    job = store.claim_job("w1", 60, now=T0)
    store.finish_job(job.job_id, "w1", sample_record(model_id, decision=True))
    (alert,) = store.open_alerts()
    assert not isinstance(alert, Alert)
    assert alert.probability == pytest.approx(0.91)


def test_release_job_puts_it_back_without_counting_a_failure(store, model_id):
    found = _discover(store)
    job = store.claim_job("host:1", 60, now=T0)
    assert job.attempts == 1
    store.release_job(job.job_id, "host:1", now=T0 + timedelta(seconds=1))
    (row,) = store.recent_results(1)
    assert (row.state, row.attempts, row.error_class, row.error_message) == (
        "pending", 0, None, None)
    with pytest.raises(ConflictError, match="not leased"):
        store.release_job(job.job_id, "host:1")  # released already
    with pytest.raises(NotFoundError):
        store.release_job(10_000, "host:1")
    again = store.claim_job("host:2", 60, now=T0 + timedelta(seconds=1))  # runnable at once
    assert again.job_id == found.job_id and again.attempts == 1
    with pytest.raises(ConflictError):
        store.release_job(again.job_id, "host:1")  # not the holder
    (event,) = [e for e in store.audit_events() if e.action == "job.released"]
    assert event.object_id == found.image_id
    assert event.payload == {"job_id": found.job_id, "attempts": 0, "lease_owner": "host:1"}
    assert event.actor == "host:1"
    assert store.verify_audit().ok


def test_release_keeps_an_earlier_failure_and_attempt_budget(store, model_id):
    _discover(store)
    job = store.claim_job("w", 60, now=T0)
    store.fail_job(job.job_id, "w", "UnreadableImageError", "truncated", 0.0, max_attempts=2,
                   now=T0)
    job = store.claim_job("w", 60, now=T0 + timedelta(seconds=1))
    assert job.attempts == 2
    store.release_job(job.job_id, "w", now=T0 + timedelta(seconds=2))
    job = store.claim_job("w", 60, now=T0 + timedelta(seconds=2))
    assert job.attempts == 2  # the interrupted claim did not use up the last attempt
    (row,) = store.recent_results(1)
    assert row.error_class == "UnreadableImageError"


def test_requeue_orphans_of_dead_owners_on_this_host(store):
    for name in ("a.tif", "b.tif", "c.tif", "d.tif"):
        _discover(store, name)
    dead = store.claim_job("mw@hostA:111", 120, now=T0)
    living = store.claim_job("mw@hostA:222", 120, now=T0)
    elsewhere = store.claim_job("mw@hostB:111", 120, now=T0)
    asked: list[str] = []

    def alive(owner: str) -> bool:
        asked.append(owner)
        return owner == "mw@hostA:222"

    n = store.requeue_orphans("mw@hostA:", alive, now=T0 + timedelta(seconds=1), actor="mw@hostA:9")
    assert n == 1
    assert sorted(asked) == ["mw@hostA:111", "mw@hostA:222"]  # the other host is not asked
    by_id = {r.image_id: r for r in store.recent_results(10)}
    assert by_id[dead.image_id].state == "pending"
    assert by_id[dead.image_id].attempts == 1  # the claim counts: the file may be the killer
    assert by_id[living.image_id].state == "processing"
    assert by_id[elsewhere.image_id].state == "processing"
    again = store.claim_job("mw@hostA:9", 120, now=T0 + timedelta(seconds=1))  # no lease wait
    assert again.job_id == dead.job_id and again.attempts == 2
    (event,) = [e for e in store.audit_events() if e.action == "job.requeued"]
    assert event.payload == {"job_id": dead.job_id, "attempts": 1,
                             "lease_owner": "mw@hostA:111", "reason": "owner-gone"}
    assert event.actor == "mw@hostA:9"
    # alive=None: no owner with this prefix runs any more.
    assert store.requeue_orphans("mw@hostA:", None, now=T0 + timedelta(seconds=2)) == 2
    assert store.queue_depth() == 4
    assert store.verify_audit().ok


def test_requeue_orphans_fails_a_job_that_keeps_killing_workers(store):
    _discover(store)
    store.claim_job("mw@h:1", 120, now=T0)
    assert store.requeue_orphans("mw@h:", None, now=T0, max_attempts=1) == 1
    (row,) = store.recent_results(1)
    assert row.state == "failed" and row.error_class == "LeaseExpired"
    assert "worker gone" in row.error_message
    assert store.open_alerts()[0].kind == "not-assessed"
