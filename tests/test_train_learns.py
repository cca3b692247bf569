"""``marginwatch train`` learns: a tiny model separates a small synthetic task, and the
same check fails when the labels are shuffled (the test of the test).

The task: 256 px synthetic scans at 1 um/px, tumour at the inked margin
(``tumour-margin``) against benign fields, 4 images per patient; a 64 px model at
4 um/px sees each scan as one tile. About a minute of CPU for both tests together.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from marginwatch.tools.synth import generate_image, patient_style, write_image
from marginwatch.tools.train import TrainOptions, train

LEARNS_AUC = 0.9  # what "it learns" means here: validation AUC at image level
IMAGES, PER_PATIENT = 64, 4
OPTIONS = dict(
    input_size_px=64,
    um_per_px=4.0,
    batch_size=8,
    epochs=8,
    lr=3e-3,
    dropout=0.1,
    label_smoothing=0.0,
    val_fraction=0.375,  # 24 validation images: a chance AUC of 0.9 is then very unlikely
    test_fraction=0.0,
    patience=50,
    seed=0,
)


def _write_manifest(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["path", "label", "patient_id", "centre"])
        writer.writerows([(p, label, patient, "development") for p, label, patient in rows])
    return path


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, str, str]]]:
    root = tmp_path_factory.mktemp("learn")
    rows = []
    for i in range(IMAGES):
        patient = f"p{i // PER_PATIENT:02d}"
        style = patient_style(np.random.default_rng([11, 1000 + i // PER_PATIENT]))
        label = "tumour" if i % 2 else "benign"
        kind = "tumour-margin" if label == "tumour" else "benign"
        image = generate_image(
            np.random.default_rng([11, i]), label, kind=kind, size_px=256, style=style
        )
        rel = f"{patient}/{i:03d}.tif"
        write_image(root / rel, image)
        rows.append((rel, label, patient))
    return root, rows


def _best_val_auc(root: Path, rows: list[tuple[str, str, str]], name: str) -> float:
    manifest = _write_manifest(root / f"{name}.csv", rows)
    result = train(manifest, root / f"model-{name}", TrainOptions(**OPTIONS))
    return result.best_val_auc


@pytest.mark.slow
@pytest.mark.timeout(900)  # about a minute on 2 idle cores; a loaded machine is slower
def test_training_learns_a_small_synthetic_task(task) -> None:
    root, rows = task
    auc = _best_val_auc(root, rows, "true-labels")
    assert auc >= LEARNS_AUC, f"validation AUC {auc:.3f} < {LEARNS_AUC}: training did not learn"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_learning_check_fails_when_labels_are_shuffled(task) -> None:
    """Same images, same recipe, labels permuted: nothing to learn, so the check above
    must not pass (otherwise it would pass for any pipeline that runs)."""
    root, rows = task
    labels = [label for _, label, _ in rows]
    shuffled = list(np.random.default_rng(3).permutation(labels))
    assert shuffled != labels
    auc = _best_val_auc(
        root,
        [(p, str(s), patient) for (p, _, patient), s in zip(rows, shuffled, strict=True)],
        "shuffled-labels",
    )
    assert auc < LEARNS_AUC, f"validation AUC {auc:.3f} with shuffled labels: the check is void"
