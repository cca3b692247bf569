"""Evaluation: the report's files, its numbers against scikit-learn, and awkward sets."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from marginwatch.engine.model import build_model
from marginwatch.tools.evaluate import evaluate
from marginwatch.tools.synth import write_dataset
from sklearn.metrics import brier_score_loss, roc_auc_score


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "tiny"
    model = build_model(
        "mobilenet_v3_small", input_size_px=64, um_per_px=4.0, synthetic_demo=True, threshold=0.5
    )
    with torch.no_grad():  # spread the random model's outputs: away from 0.5
        model.torch_module().classifier.weight.mul_(20.0)
    model.save(folder)
    return folder


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("eval-data")
    write_dataset(
        root / "int", images=12, patients=4, tumour_fraction=0.5, size_px=256, seed=3, workers=1
    )
    write_dataset(
        root / "ext",
        images=8,
        patients=3,
        tumour_fraction=0.5,
        size_px=256,
        seed=4,
        centre="external",
        workers=1,
    )
    # one image the engine cannot assess (blank glass): listed, not counted as benign
    tifffile.imwrite(
        root / "int" / "blank.tif",
        np.zeros((256, 256), np.uint16),
        resolution=(1e4, 1e4),
        resolutionunit="CENTIMETER",
    )
    with (root / "int" / "manifest.csv").open("a") as fh:
        fh.write("blank.tif,benign,dev-01,development,benign,grey,1\n")
    return root / "int" / "manifest.csv", root / "ext" / "manifest.csv"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def test_report_files_and_numbers_match_scikit_learn(
    tiny_model: Path, sets: tuple[Path, Path], tmp_path: Path
) -> None:
    internal, external = sets
    report = tmp_path / "report"
    result = evaluate(tiny_model, internal, report, external=external, resamples=200)
    for name in (
        "report.md",
        "metrics.json",
        "predictions.csv",
        "roc.png",
        "reliability.png",
        "gallery/gallery.png",
    ):
        assert (report / name).stat().st_size > 0, name

    rows = _rows(report / "predictions.csv")
    assert list(rows[0]) == [
        "set",
        "image",
        "patient",
        "centre",
        "label",
        "probability",
        "decision",
    ]
    blank = [r for r in rows if r["image"] == "blank.tif"]
    assert blank == [{**blank[0], "probability": "", "decision": "not assessed"}]

    saved = json.loads((report / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(result))
    threshold = saved["model"]["threshold"]
    for set_name in ("internal", "external"):
        assessed = [r for r in rows if r["set"] == set_name and r["decision"] != "not assessed"]
        y = np.array([r["label"] == "tumour" for r in assessed], dtype=int)
        p = np.array([float(r["probability"]) for r in assessed])
        assert all(
            (r["decision"] == "tumour") == (float(r["probability"]) >= threshold) for r in assessed
        )
        data = saved["sets"][set_name]
        assert data["n_assessed"] == len(assessed)
        m = data["metrics"]
        assert m["auc"]["value"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
        assert m["brier"]["value"] == pytest.approx(brier_score_loss(y, p), abs=1e-6)
        for name in ("sensitivity", "specificity", "ppv", "npv", "auc", "brier", "ece"):
            assert set(m[name]) >= {"value", "ci_low", "ci_high", "undefined"}
        cm = data["confusion_matrix"]
        assert cm["tp"] + cm["fn"] == y.sum() and sum(cm.values()) == len(y)
    assert saved["sets"]["internal"]["not_assessed"][0]["image"] == "blank.tif"
    assert saved["sets"]["internal"]["n_images"] == saved["sets"]["internal"]["n_assessed"] + 1
    assert saved["sets"]["external"]["centres"] == ["external"]

    text = (report / "report.md").read_text()
    assert "Synthetic demo model" in text and "mean nothing clinically" in text
    assert "1 image(s) could not be assessed" in text
    assert "| AUC |" in text and "0.930" in text  # the paper's internal AUC beside ours
    assert list((report / "gallery").glob("internal-*.png"))


def test_one_class_set_reports_undefined_metrics(
    tiny_model: Path, sets: tuple[Path, Path], tmp_path: Path
) -> None:
    internal, _ = sets
    only_tumour = tmp_path / "only.csv"
    rows = [r for r in _rows(internal) if r["label"] == "tumour"]
    with only_tumour.open("w", newline="") as fh:
        writer = csv.DictWriter(
            fh, fieldnames=["path", "label", "patient_id", "centre"], extrasaction="ignore"
        )
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "path": str(internal.parent / r["path"])})
    result = evaluate(tiny_model, only_tumour, tmp_path / "r", resamples=50)
    m = result["sets"]["internal"]["metrics"]
    assert m["auc"]["value"] is None and "one class" in m["auc"]["undefined"]
    assert m["specificity"]["value"] is None
    assert m["sensitivity"]["value"] is not None
    assert "undefined (only one class present" in (tmp_path / "r" / "report.md").read_text()


def test_cli_bad_model_is_one_line(sets: tuple[Path, Path], tmp_path: Path) -> None:
    internal, _ = sets
    script = Path(sys.executable).parent / "marginwatch"
    proc = subprocess.run(
        [
            str(script),
            "evaluate",
            str(tmp_path / "nope"),
            str(internal),
            "--report",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("marginwatch: error:") and "model folder not found" in proc.stderr
    assert "Traceback" not in proc.stderr
