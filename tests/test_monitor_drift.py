"""Input drift without ground truth: real synthetic TIFFs through the real engine.

The reference is what ``marginwatch train`` writes into the card (``input_reference``
from its held-out images' tile cache); the stream is what the daemon records (the
engine's ``Assessment.feature_mean`` through ``AssessmentRecord.from_assessment`` into
the store). A development-centre stream raises no alarm; switching to the external
centre (other stain, noise and pixel size) raises the input-drift alarm.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_model
from marginwatch import engine
from marginwatch.daemon.batching import concat_inferences, slice_inference
from marginwatch.engine.config import EngineConfig
from marginwatch.engine.errors import NoTissueError, QualityGateError
from marginwatch.engine.inference import Inference
from marginwatch.storage import AssessmentRecord, Store
from marginwatch.tools import monitoring
from marginwatch.tools._dataset import build_cache
from marginwatch.tools._input_reference import input_reference
from marginwatch.tools._manifest import load_manifest

MARGINWATCH = Path(sys.executable).with_name("marginwatch")
T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MARGINWATCH_CONFIG": ""}
    if args[0] == "monitor":  # small test sizes
        args = (*args, "--resamples", "300", "--drift-min-images", "20")
    return subprocess.run([str(MARGINWATCH), *args], capture_output=True, text=True,
                          timeout=300, env=env)


@pytest.fixture
def one_thread():
    """Tiny models run ~10x faster on one thread on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def synth(out: Path, centre: str, seed: int, images: int = 24) -> Path:
    result = run("synth", str(out), "--images", str(images), "--patients", "6", "--size-px", "256",
                 "--centre", centre, "--seed", str(seed), "--workers", "1")
    assert result.returncode == 0, result.stderr
    return out


def test_pooled_features_travel_through_batching():
    parts = [Inference(logits=torch.zeros(n, 2), probabilities=torch.zeros(n),
                       raw_probabilities=torch.zeros(n), cams=torch.zeros(n, 2, 2),
                       pooled=torch.arange(n * 3, dtype=torch.float32).reshape(n, 3) + k)
             for k, n in ((0, 2), (10, 3))]
    joined = concat_inferences(parts)
    assert joined.pooled.shape == (5, 3) and torch.equal(joined.pooled[2:], parts[1].pooled)
    assert torch.equal(Inference.concat(parts).pooled, joined.pooled)
    assert torch.equal(slice_inference(joined, 1, 3).pooled, joined.pooled[1:3])


def test_external_centre_raises_the_input_drift_alarm(tmp_path, one_thread):
    model_dir = make_tiny_model(tmp_path / "model")
    model = engine.load_model(model_dir)
    # what train does: the held-out development images' tile cache -> the card
    held_out = synth(tmp_path / "held-out", "development", 0)
    cache, _ = build_cache(load_manifest(held_out / "manifest.csv"), model, EngineConfig())
    model.update_card(input_reference=input_reference(model, cache))
    reference = model.card.input_reference
    assert reference["kind"] == monitoring.SUMMARY_KIND
    assert len(reference["mu"]) == 512 and reference["n_images"] == len(cache)

    url = str(tmp_path / "m.db")
    with Store.open(url, upgrade=True) as store:
        model_id = store.register_model(model.digest, model.card.architecture,
                                        model.card.model_dump(mode="json"))

    def stream(folder: Path, start: datetime) -> int:
        count = 0
        with Store.open(url) as store:
            for k, path in enumerate(sorted(folder.glob("*/*.tif"))):
                try:
                    assessment = engine.assess(path, model)
                except (NoTissueError, QualityGateError):  # not assessable: no summary
                    continue
                now = start + timedelta(minutes=k)
                rel = f"{folder.name}/{path.relative_to(folder).as_posix()}"
                store.record_discovery("export", rel, path.stat().st_size, 1, "t", now=now)
                job = store.claim_job("w", 60, now=now)
                record = AssessmentRecord.from_assessment(assessment, model_id=model_id)
                assert record.summary_kind == monitoring.SUMMARY_KIND
                store.finish_job(job.job_id, "w", record, now=now)
                count += 1
        return count

    assert stream(synth(tmp_path / "dev", "development", 5), T0) >= 20
    quiet = run("monitor", "--db", url, "--json", "--raise-alarms")
    assert quiet.returncode == 0, quiet.stderr
    report = json.loads(quiet.stdout)
    assert report["drift"]["p_value"] is not None and not report["drift"]["alarm"]
    assert report["findings"] == [] and report["note"] == "no ground truth in range"

    # 36 scans: the quality gate refuses about a third of these small external ones
    assert stream(synth(tmp_path / "ext", "external", 5, images=36),
                  T0 + timedelta(days=1)) >= 20
    loud = run("monitor", "--db", url, "--json", "--raise-alarms", "--since",
               (T0 + timedelta(hours=12)).isoformat())
    assert loud.returncode == 0, loud.stderr
    report = json.loads(loud.stdout)
    assert report["drift"]["alarm"], report["drift"]
    assert [f["kind"] for f in report["findings"]] == ["input-drift"]
    assert [a["state"] for a in report["alarms"]] == ["raised"]
    with Store.open(url, readonly=True) as store:
        (alarm,) = store.open_monitor_alarms()
    assert alarm.kind == "input-drift" and "training reference" in alarm.message


def test_feature_mean_is_the_train_hook_summary(tmp_path, one_thread):
    """The daemon's per-image summary and train's reference see the same features."""
    model = engine.load_model(make_tiny_model(tmp_path / "model"))
    folder = synth(tmp_path / "few", "development", 2)
    manifest = load_manifest(folder / "manifest.csv")
    cache, skipped = build_cache(manifest, model, EngineConfig())
    from marginwatch.tools._input_reference import pooled_features

    per_tile = pooled_features(model, cache.tiles)
    rows = [r for r in manifest.rows if r.image not in skipped]
    for i, row in enumerate(rows[:3]):
        daemon_view = engine.assess(row.path, model).feature_mean
        train_view = per_tile[cache.image_of == i].mean(axis=0)
        np.testing.assert_allclose(daemon_view, train_view, rtol=1e-4, atol=1e-5)


def test_too_few_held_out_images_give_no_reference(tmp_path, one_thread):
    from marginwatch.tools._dataset import TileCache

    model = engine.load_model(make_tiny_model(tmp_path / "model"))
    tiles = torch.zeros((4, 3, 64, 64), dtype=torch.uint8)
    cache = TileCache(tiles, np.array([0, 0, 1, 1]), np.array([0, 1]), np.array([0, 2, 4]))
    assert input_reference(model, cache) is None  # train then writes no input_reference
    assert model.update_card(input_reference=None).input_reference is None
