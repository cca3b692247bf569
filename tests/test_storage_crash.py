"""finish_job is ONE transaction: SIGKILL a real writer between its steps.

A writer subprocess claims a job and calls finish_job with the test-only pause hook
(MARGINWATCH_STORAGE_TEST_PAUSE_AT) so it stops mid-transaction at a named step; the
test kills it with SIGKILL there and checks that none of the job's records exist, the job
is still leased (and goes back to pending once the lease expires), the audit chain is
intact, and a second worker then records everything.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from marginwatch.storage import Store
from marginwatch.storage.models import Alert, AuditEvent, Heatmap, Prediction, Tile
from marginwatch.storage._jobs import PAUSE_ENV
from marginwatch.storage.testing import backend_params, database_url, sample_record
from sqlalchemy import func, select

WRITER = """
import sys
from marginwatch.storage import Store
from marginwatch.storage.testing import sample_record
with Store.open(sys.argv[1]) as store:
    job = store.claim_job("doomed-worker", lease_seconds=60)
    store.finish_job(job.job_id, "doomed-worker",
                     sample_record(int(sys.argv[2]), decision=True))
print("committed", flush=True)
"""

STEPS = ["after_prediction", "after_tiles", "after_audit", "before_commit"]


@pytest.fixture(params=backend_params())
def db_url(request, tmp_path):
    with database_url(request.param, tmp_path) as url:
        yield url


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
            [sys.executable, "-c", WRITER, db_url, str(model_id)],
            env={**os.environ, PAUSE_ENV: f"finish_job:{step}"},
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
                          capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != PAUSE_ENV})
    assert done.stdout.strip() == "committed", done.stderr
    with Store.open(db_url, readonly=True) as store:
        assert _counts(store)["tiles"] == 3
        assert store.list_images()[0].state == "done"
