"""finish_job is ONE transaction: SIGKILL a real writer between its steps.

A writer subprocess claims a job and calls finish_job; the test harness (not the
production code) stops it mid-transaction at a named step with SQLAlchemy engine events
registered in the writer: after the prediction's INSERT, after the heatmap's (the tiles
come before it), before the job's UPDATE (all audit events written), or at the COMMIT
itself. The test kills it with SIGKILL there and checks that none of the job's records
exist, the job is still leased (and goes back to pending once the lease expires), the
audit chain is intact, and a second worker then records everything.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from marginwatch.storage import Store
from marginwatch.storage.models import Alert, AuditEvent, Heatmap, Prediction, Tile
from marginwatch.storage.testing import sample_record
from sqlalchemy import func, select

WRITER = """
import sys, time
from sqlalchemy import Engine, event
from marginwatch.storage import Store
from marginwatch.storage.testing import sample_record

step = sys.argv[3] if len(sys.argv) > 3 else None
armed = False
# step -> (event, what the statement starts with); "commit" is the COMMIT itself
WHERE = {"after_prediction": ("after_cursor_execute", "INSERT INTO predictions"),
         "after_tiles": ("after_cursor_execute", "INSERT INTO heatmaps"),
         "after_audit": ("before_cursor_execute", "UPDATE jobs"),
         "before_commit": ("commit", None)}

def pause(name):
    print(f"paused at finish_job:{name}", flush=True)
    time.sleep(3600)

if step is not None:
    kind, prefix = WHERE[step]
    if kind == "commit":
        @event.listens_for(Engine, "commit")
        def _commit(conn):
            if armed:
                pause(step)
    else:
        @event.listens_for(Engine, kind)
        def _statement(conn, cursor, statement, *args):
            if armed and statement.lstrip().upper().startswith(prefix.upper()):
                pause(step)

with Store.open(sys.argv[1]) as store:
    job = store.claim_job("doomed-worker", lease_seconds=60)
    armed = True  # only finish_job's transaction
    store.finish_job(job.job_id, "doomed-worker",
                     sample_record(int(sys.argv[2]), decision=True))
print("committed", flush=True)
"""

STEPS = ["after_prediction", "after_tiles", "after_audit", "before_commit"]


def _counts(store: Store) -> dict[str, int]:
    with store._read() as session:
        return {model.__tablename__: session.scalar(select(func.count()).select_from(model))
                for model in (Prediction, Tile, Heatmap, Alert, AuditEvent)}


@pytest.mark.parametrize("step", STEPS)
def test_sigkill_mid_finish_leaves_nothing(db_url, step):
    with Store.open(db_url, upgrade=True) as store:
        model_id = store.register_model("a" * 64, "resnet18", {})
        store.record_discovery("export", "case/a.tif", 1, 1, "host:daemon")
        before = _counts(store)
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, db_url, str(model_id), step],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = writer.stdout.readline()
            assert line.strip() == f"paused at finish_job:{step}", writer.stderr.read()
            writer.send_signal(signal.SIGKILL)
        finally:
            writer.wait(timeout=30)
            writer.stdout.close()
            writer.stderr.close()
        assert writer.returncode == -signal.SIGKILL

        assert _counts(store) == before  # nothing of the job's records exists
        (row,) = store.list_images()
        assert (row.state, row.prediction_id) == ("processing", None)
        assert store.verify_audit().ok

        later = datetime.now(UTC) + timedelta(seconds=61)
        assert store.requeue_expired(now=later) == 1
        job = store.claim_job("survivor", 60, now=later)
        outcome = store.finish_job(job.job_id, "survivor", sample_record(model_id, decision=True))
        after = _counts(store)
        assert (after["predictions"], after["tiles"], after["heatmaps"], after["alerts"]) == (
            1, 3, 1, 1)
        assert outcome.alert_id is not None
        assert store.list_images()[0].state == "done"
        assert store.verify_audit().ok


def test_writer_without_pause_commits(db_url):
    with Store.open(db_url, upgrade=True) as store:
        model_id = store.register_model("a" * 64, "resnet18", {})
        store.record_discovery("export", "case/a.tif", 1, 1, "host:daemon")
    done = subprocess.run([sys.executable, "-c", WRITER, db_url, str(model_id)],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "committed", done.stderr
    with Store.open(db_url, readonly=True) as store:
        assert _counts(store)["tiles"] == 3
        assert store.list_images()[0].state == "done"
