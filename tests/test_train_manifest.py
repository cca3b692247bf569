"""Manifest validation and the patient-grouped split: clear errors before any training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from marginwatch.engine.errors import ManifestError
from marginwatch.tools._manifest import load_manifest
from marginwatch.tools._splits import split_by_patient


def _write(tmp_path: Path, rows: list[tuple[str, str, str, str]], make_files: bool = True) -> Path:
    lines = ["path,label,patient_id,centre"]
    for path, label, patient, centre in rows:
        lines.append(f"{path},{label},{patient},{centre}")
        if make_files:
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_bytes(b"x")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def _study_like(seed: int = 0) -> list[tuple[str, str, str, str]]:
    """275 images (37 tumour) from 24 patients, like the paper's development set."""
    rng = np.random.default_rng(seed)
    sizes = rng.multinomial(275 - 24 * 6, np.ones(24) / 24) + 6
    tumour_patients = rng.choice(24, size=12, replace=False)
    pos_counts = dict(
        zip(tumour_patients, rng.multinomial(37 - 12, np.ones(12) / 12) + 1, strict=True)
    )
    rows = []
    for p, size in enumerate(sizes):
        n_pos = min(int(pos_counts.get(p, 0)), int(size) - 1)
        for k in range(size):
            rows.append(
                (
                    f"P{p:02d}/img{k:02d}.tif",
                    "tumour" if k < n_pos else "benign",
                    f"P{p:02d}",
                    "dev",
                )
            )
    return rows


def test_loads_labels_patients_and_relative_paths(tmp_path: Path) -> None:
    m = load_manifest(
        _write(tmp_path, [("a/x.tif", "Tumour", "P1", "dev"), ("b/y.tif", "0", "P2", "dev")])
    )
    assert m.labels == [1, 0]
    assert m.rows[0].path == tmp_path / "a" / "x.tif"
    assert m.rows[0].image == "a/x.tif"
    assert len(m.sha256) == 64
    assert "2 images (1 tumour, 1 benign) from 2 patients" == m.describe()


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = _write(tmp_path, [("a.tif", "tumour", "P1", "dev"), ("b.tif", "maybe", "P2", "dev")])
    (tmp_path / "a.tif").unlink()
    with pytest.raises(ManifestError) as err:
        load_manifest(path)
    text = str(err.value)
    assert "1 missing file (line 2: a.tif)" in text
    assert "1 unknown label (line 3: 'maybe')" in text
    assert "\n" not in text


def test_patient_in_two_centres(tmp_path: Path) -> None:
    path = _write(tmp_path, [("a.tif", "tumour", "P1", "dev"), ("b.tif", "benign", "P1", "ext")])
    with pytest.raises(ManifestError, match="patient in two centres .P1: dev, ext"):
        load_manifest(path)


def test_missing_column_and_missing_manifest(tmp_path: Path) -> None:
    bad = tmp_path / "m.csv"
    bad.write_text("file,label\nx.tif,1\n")
    with pytest.raises(ManifestError, match="missing column.*path.*patient_id"):
        load_manifest(bad)
    with pytest.raises(ManifestError, match="manifest not found"):
        load_manifest(tmp_path / "nope.csv")


def test_only_one_class_is_refused_for_a_split(tmp_path: Path) -> None:
    m = load_manifest(_write(tmp_path, [(f"{i}.tif", "benign", f"P{i}", "dev") for i in range(9)]))
    with pytest.raises(ManifestError, match="every image is labelled benign"):
        split_by_patient(m)


def test_too_few_patients_for_a_grouped_split(tmp_path: Path) -> None:
    rows = [
        (f"{i}.tif", "tumour" if i % 2 else "benign", "P1" if i < 6 else "P2", "dev")
        for i in range(12)
    ]
    m = load_manifest(_write(tmp_path, rows))
    with pytest.raises(ManifestError, match="too few patients.*2 patients"):
        split_by_patient(m)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_split_is_grouped_stratified_and_about_57_test_images(
    tmp_path: Path, seed: int
) -> None:
    m = load_manifest(_write(tmp_path, _study_like(seed)), check_files=True)
    split = split_by_patient(m, seed=seed)
    patients = {
        name: {m.rows[i].patient for i in split.indices(name)} for name in ("train", "val", "test")
    }
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    assert sorted(split.train + split.val + split.test) == list(range(275))
    assert 50 <= len(split.test) <= 64
    for name in ("train", "val", "test"):
        labels = [m.rows[i].label for i in split.indices(name)]
        assert 0 < sum(labels) < len(labels)
    test_pos = sum(m.rows[i].label for i in split.test)
    assert 5 <= test_pos <= 11
    assert split == split_by_patient(m, seed=seed)  # deterministic
