"""Monitoring: metrics from tools.metrics with case-level CIs, trends, drift, alarms, CLI.

The demonstration runs (issue 18) at small sizes:

- a stream of development-centre images with ground truth raises no alarm;
- flipping a share of the labels (imported as corrections) raises the performance alarm,
  which the dashboard header shows until it is acknowledged;
- switching the stream to the external centre raises the input-drift alarm
  (``test_monitor_drift.py``: real images through the real engine).

For the performance runs the probabilities come from a simulated, well-separating model
(Beta-distributed given the label, seeded): the tiny random CNNs the suite can afford do
not separate the synthetic classes, and sensitivity is only meaningful for a model that
does. The images, their paths, the manifest and everything downstream are real.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from marginwatch.daemon.dashboard import Source, render
from marginwatch.storage import Store
from marginwatch.storage.testing import sample_record
from marginwatch.tools import metrics, monitoring
from PIL import Image
from rich.console import Console

MARGINWATCH = Path(sys.executable).with_name("marginwatch")
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
FAST = monitoring.MonitorSettings(resamples=300)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MARGINWATCH_CONFIG": ""}
    if args[0] == "monitor" and args[1:2] != ("ack",):
        args = (*args, "--resamples", "300")  # small test sizes
    return subprocess.run([str(MARGINWATCH), *args], capture_output=True, text=True,
                          timeout=300, env=env)


# --- computations ------------------------------------------------------------------------


def test_performance_is_tools_metrics_with_a_bootstrap_over_cases():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    p = np.clip(0.3 * y + rng.random(60) * 0.7, 0, 1)
    cases = [f"case-{i // 3}" for i in range(60)]
    perf = monitoring.performance(y, p, cases, 0.5, FAST)
    reference = metrics.summarise(y, p, np.asarray(cases), 0.5, resamples=300)
    assert perf.metrics == reference  # the same function, not a second implementation
    assert (perf.n_images, perf.n_cases, perf.n_positive) == (60, 20, int(y.sum()))
    by_image = metrics.summarise(y, p, np.arange(60), 0.5, resamples=300)
    assert perf.metrics["auc"].ci != by_image["auc"].ci  # resampled by case, not by image


def test_trend_per_month_and_per_cases():
    times = [T0, T0 + timedelta(days=2), T0 + timedelta(days=40), T0 + timedelta(days=41)]
    y, p = [1, 0, 1, 0], [0.9, 0.2, 0.3, 0.1]
    cases = ["a", "a", "b", "c"]
    months = monitoring.trend(times, y, p, cases, 0.5)
    assert [(m.label, m.n_images, m.n_cases) for m in months] == [("2026-03", 2, 1),
                                                                   ("2026-04", 2, 2)]
    assert months[0].sensitivity == 1.0 and months[1].sensitivity == 0.0
    blocks = monitoring.trend(times, y, p, cases, 0.5, per_cases=2)
    assert [(b.label, b.n_images) for b in blocks] == [("cases 1-2", 3), ("cases 3-4", 1)]
    assert math.isnan(blocks[1].sensitivity)  # no tumour image in that block: undefined


def test_drift_statistic_same_versus_shifted_distribution():
    rng = np.random.default_rng(1)
    cov = np.eye(16) + 0.5  # correlated features, as CNN features are
    reference = monitoring.reference_from_features(
        rng.multivariate_normal(np.zeros(16), cov, 80), source="test")
    assert reference["kind"] == monitoring.SUMMARY_KIND
    assert np.asarray(reference["scores"]).shape == (80, 5)
    assert np.asarray(reference["scores"]).std(axis=0, ddof=1) == pytest.approx(1.0)
    settings = monitoring.MonitorSettings(drift_min_images=30)
    same = monitoring.component_scores(rng.multivariate_normal(np.zeros(16), cov, 60),
                                       reference)
    shifted = monitoring.component_scores(
        rng.multivariate_normal(np.full(16, 1.0), cov, 60), reference)
    assert not monitoring.drift_test(same, reference, settings).alarm
    result = monitoring.drift_test(shifted, reference, settings)
    assert result.alarm and result.p_value < settings.drift_p_value and result.component == 0
    few = monitoring.drift_test(shifted[:5], reference, settings)
    assert not few.alarm and "needs 30" in few.reason
    assert "no input_reference" in monitoring.drift_test(shifted, None, settings).reason
    with pytest.raises(ValueError, match="16"):
        monitoring.component_scores(np.zeros((3, 8)), reference)


def test_same_source_rarely_alarms():
    """The false-alarm rate on new images from the reference's own source stays small."""
    settings = monitoring.MonitorSettings(drift_min_images=30)
    alarms = 0
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        mix = rng.standard_normal((32, 32))
        reference = monitoring.reference_from_features(
            rng.standard_normal((60, 32)) @ mix, source="test")
        new = monitoring.component_scores(rng.standard_normal((60, 32)) @ mix, reference)
        alarms += monitoring.drift_test(new, reference, settings).alarm
    assert alarms <= 1


# --- the demonstration: performance alarms from a synthetic stream ---------------------


def simulated_probability(label: str, rng: np.random.Generator) -> float:
    """A well-separating model: tumour ~ Beta(9, 2), benign ~ Beta(2, 9)."""
    return float(rng.beta(9, 2) if label == "tumour" else rng.beta(2, 9))


def validation_card_metrics() -> dict[str, float]:
    """What train writes into the card, from a held-out draw of the same simulated model."""
    rng = np.random.default_rng(99)
    y = np.array([1, 0] * 100)
    p = np.array([simulated_probability("tumour" if v else "benign", rng) for v in y])
    d = p >= 0.5
    return {"val_sensitivity": metrics.sensitivity(y, d), "val_specificity":
            metrics.specificity(y, d), "val_auc": metrics.roc_auc(y, p),
            "val_brier": metrics.brier_score(y, p),
            "val_ece": metrics.expected_calibration_error(y, p), "target_sensitivity": 0.9}


@pytest.fixture(scope="module")
def dev_export(tmp_path_factory):
    """A small synthetic development-centre export (real TIFFs) and its manifest."""
    out = tmp_path_factory.mktemp("export") / "dev"
    result = run("synth", str(out), "--images", "60", "--patients", "20", "--size-px", "128",
                 "--tumour-fraction", "0.5", "--workers", "1", "--seed", "3")
    assert result.returncode == 0, result.stderr
    with (out / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    return out, rows


def record_stream(url: str, rows: list[dict[str, str]]) -> None:
    rng = np.random.default_rng(7)
    with Store.open(url, upgrade=True) as store:
        model_id = store.register_model("f" * 64, "resnet18", {
            "architecture": "resnet18", "threshold": 0.5, "metrics": validation_card_metrics(),
            "synthetic_demo": True})
        for k, row in enumerate(rows):
            now = T0 + timedelta(days=k)  # two months of cases
            store.record_discovery("export", row["path"], 100 + k, 1, "host:daemon", now=now)
            job = store.claim_job("w", 60, now=now)
            p = simulated_probability(row["label"], rng)
            store.finish_job(job.job_id, "w", sample_record(model_id, probability=p,
                                                            decision=p >= 0.5), now=now)


def frame(url: str) -> str:
    console = Console(width=120, height=30, record=True, file=open(os.devnull, "w"))
    with Source(url) as source:
        console.print(render(source.snapshot(), 120, 30), height=30)
    console.file.close()
    return console.export_text()


def test_stream_with_truth_then_flipped_labels_raises_the_performance_alarm(
        db_url, dev_export, tmp_path):
    export, rows = dev_export
    record_stream(db_url, rows)
    imported = run("truth", "import", str(export / "manifest.csv"), "--by", "pathology",
                   "--db", db_url)
    assert imported.returncode == 0, imported.stderr
    assert f"{len(rows)} added" in imported.stdout

    quiet = run("monitor", "--db", db_url, "--raise-alarms", "--json", "--report",
                str(tmp_path / "dev"))
    assert quiet.returncode == 0, quiet.stderr
    report = json.loads(quiet.stdout)
    assert report["images_with_truth"] == len(rows) and report["findings"] == []
    assert report["alarms"] == [] and report["open_alarms"] == []
    sens = report["performance"]["metrics"]["sensitivity"]
    assert sens["ci_high"] >= 0.9 and report["model"]["validation"]["sensitivity"] > 0.9
    assert len(report["trend"]) >= 2  # per month
    assert "MONITOR ALARM" not in frame(db_url)

    flipped = tmp_path / "flipped.csv"
    rng = np.random.default_rng(11)
    chosen = set(rng.choice(len(rows), size=len(rows) * 3 // 10, replace=False).tolist())
    with flipped.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        for k, row in enumerate(rows):
            label = row["label"]
            if k in chosen:
                label = "benign" if label == "tumour" else "tumour"
            writer.writerow({**row, "label": label})
    corrected = run("truth", "import", str(flipped), "--by", "pathology", "--db", db_url)
    assert corrected.returncode == 0, corrected.stderr
    assert f"{len(chosen)} corrected" in corrected.stdout

    loud = run("monitor", "--db", db_url, "--raise-alarms", "--json")
    assert loud.returncode == 0, loud.stderr
    report = json.loads(loud.stdout)
    kinds = {f["kind"] for f in report["findings"]}
    assert "sensitivity" in kinds and "calibration" in kinds
    assert {a["state"] for a in report["alarms"]} == {"raised"}
    sens = report["performance"]["metrics"]["sensitivity"]
    assert sens["ci_high"] < 0.9
    shown = frame(db_url)
    assert "MONITOR ALARM" in shown and "(+1 more)" in shown

    again = json.loads(run("monitor", "--db", db_url, "--raise-alarms", "--json").stdout)
    assert {a["state"] for a in again["alarms"]} == {"open"}  # not raised twice
    for alarm in report["alarms"]:
        acked = run("monitor", "ack", str(alarm["alarm_id"]), "--by", "Dr Q", "--db", db_url)
        assert acked.returncode == 0, acked.stderr
    assert "MONITOR ALARM" not in frame(db_url)
    with Store.open(db_url, readonly=True) as store:
        actions = [e.action for e in store.audit_events()]
        assert actions.count("monitor.alarm") == 2
        assert actions.count("monitor.alarm.acknowledged") == 2
        assert store.verify_audit().ok


def test_monitor_without_ground_truth_says_so_with_empty_figures(tmp_path):
    url = str(tmp_path / "m.db")
    with Store.open(url, upgrade=True):
        pass
    result = run("monitor", "--db", url, "--report", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr
    assert "no ground truth in range" in result.stdout and "Traceback" not in result.stderr
    for name in ("reliability.png", "roc.png", "trend.png"):
        with Image.open(tmp_path / "report" / name) as png:
            assert png.size[0] > 100
    data = json.loads((tmp_path / "report" / "monitor.json").read_text())
    assert data["performance"] is None and data["images_with_truth"] == 0


def test_monitor_range_and_bad_dates(db_url, dev_export, tmp_path):
    export, rows = dev_export
    record_stream(db_url, rows[:20])
    assert run("truth", "import", str(export / "manifest.csv"), "--by", "p", "--db", db_url,
               "--skip-bad").returncode == 0
    later = run("monitor", "--db", db_url, "--json", "--since", "2027-01-01")
    assert later.returncode == 0 and json.loads(later.stdout)["images_assessed"] == 0
    some = json.loads(run("monitor", "--db", db_url, "--json", "--until",
                          (T0 + timedelta(days=10)).isoformat()).stdout)
    assert some["images_assessed"] == 10 and some["images_with_truth"] == 10
    bad = run("monitor", "--db", db_url, "--since", "yesterday")
    assert bad.returncode == 2 and "--since 'yesterday'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_daemon_drift_check_raises_the_alarm_once(tmp_path):
    """The daemon's periodic check (daemon.drift_check_seconds), on stored summaries."""
    import dataclasses

    from marginwatch.daemon._monitor_cli import check_drift
    from marginwatch.storage.records import _summary

    rng = np.random.default_rng(5)
    mix = rng.standard_normal((24, 24))
    reference = monitoring.reference_from_features(rng.standard_normal((60, 24)) @ mix,
                                                   source="test")
    url = str(tmp_path / "m.db")
    with Store.open(url, upgrade=True) as store:
        model_id = store.register_model("a" * 64, "resnet18", {
            "threshold": 0.5, "input_reference": reference})

        def record(vectors: np.ndarray, start: datetime) -> None:
            for k, vector in enumerate(vectors):
                now = start + timedelta(minutes=k)
                store.record_discovery("export", f"c{k // 4}/{start:%d}-{k}.tif", 10, 1, "t",
                                       now=now)
                job = store.claim_job("w", 60, now=now)
                rec = dataclasses.replace(sample_record(model_id), **_summary(vector))
                store.finish_job(job.job_id, "w", rec, now=now)

        record(rng.standard_normal((40, 24)) @ mix, T0)
        assert check_drift(store, model_id, actor="daemon") == []
        record(rng.standard_normal((200, 24)) @ mix + 6.0, T0 + timedelta(days=1))
        (raised,) = check_drift(store, model_id, actor="daemon")
        assert raised["state"] == "raised"
        (again,) = check_drift(store, model_id, actor="daemon")
        assert again == {**raised, "state": "open"}
        (alarm,) = store.open_monitor_alarms()
        assert alarm.kind == "input-drift" and alarm.details["n_images"] == 200
