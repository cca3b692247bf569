"""Patient-grouped, label-stratified train / validation / test split.

Images of one patient are correlated, so a patient's images all go to one split (the
paper's design; asserted, not hoped). Within that constraint the split follows the
requested fractions of images AND of tumour images as closely as it can: many seeded
random orders of the patients are assigned greedily to the split with the largest
deficit, and the order whose image and tumour counts are nearest the targets wins.

Defaults (test 0.21, validation 0.15) give an internal test of about 57 of 275 images,
as in Fang, Mayor et al.; with ~11 images per patient the actual count moves by about
half a patient around that.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from marginwatch.engine.errors import ManifestError

from ._manifest import Manifest

__all__ = ["Split", "split_by_patient"]

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """Indices into the manifest's rows, per split."""

    train: tuple[int, ...]
    val: tuple[int, ...]
    test: tuple[int, ...]

    def indices(self, name: str) -> tuple[int, ...]:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def as_dict(self, manifest: Manifest) -> dict[str, list[str]]:
        """Split -> sorted patient ids (for the training record)."""
        return {
            name: sorted({manifest.rows[i].patient for i in self.indices(name)}) for name in SPLITS
        }


def _check_disjoint(manifest: Manifest, split: Split) -> None:
    owner: dict[str, str] = {}
    for name in SPLITS:
        for i in split.indices(name):
            patient = manifest.rows[i].patient
            if owner.setdefault(patient, name) != name:
                raise AssertionError(f"patient {patient} is in both {owner[patient]} and {name}")
    covered = sorted(i for name in SPLITS for i in split.indices(name))
    if covered != list(range(len(manifest))):
        raise AssertionError("the split does not cover every image exactly once")


def split_by_patient(
    manifest: Manifest,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.21,
    seed: int = 0,
    trials: int = 400,
) -> Split:
    """Split the manifest by patient; every split holds tumour and benign images.

    ``test_fraction=0`` gives no test split (train on everything but validation, for
    example when the test set is a separate manifest).
    """
    if not 0.0 < val_fraction < 1.0 or not 0.0 <= test_fraction < 1.0:
        raise ManifestError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction}: expected "
            "0 < val_fraction < 1 and 0 <= test_fraction < 1"
        )
    if val_fraction + test_fraction >= 0.9:
        raise ManifestError(
            f"val_fraction + test_fraction = {val_fraction + test_fraction:.2f} leaves "
            "too little to train on; expected a sum below 0.9"
        )
    manifest.require_both_classes("a train/validation/test split")
    names = [n for n in SPLITS if n != "test" or test_fraction > 0]

    by_patient: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(manifest.rows):
        by_patient[row.patient].append(i)
    patients = sorted(by_patient)
    n_img = np.array([len(by_patient[p]) for p in patients], dtype=float)
    n_pos = np.array([sum(manifest.rows[i].label for i in by_patient[p]) for p in patients], float)
    n_neg = n_img - n_pos
    with_pos, with_neg = int((n_pos > 0).sum()), int((n_neg > 0).sum())
    if with_pos < len(names) or with_neg < len(names) or len(patients) < len(names):
        raise ManifestError(
            f"{manifest.source}: too few patients for a patient-grouped split into "
            f"{'/'.join(names)}: {len(patients)} patients, {with_pos} with tumour images, "
            f"{with_neg} with benign images; each split needs a patient with tumour and "
            f"one with benign images, so at least {len(names)} of each"
        )

    fractions = {"val": val_fraction, "test": test_fraction}
    fractions["train"] = 1.0 - val_fraction - test_fraction
    target_img = np.array([fractions[n] * n_img.sum() for n in names])
    target_pos = np.array([fractions[n] * n_pos.sum() for n in names])
    rng = np.random.default_rng(seed)
    best: tuple[float, np.ndarray] | None = None
    for _ in range(trials):
        order = rng.permutation(len(patients))
        got_img = np.zeros(len(names))
        got_pos = np.zeros(len(names))
        got_neg = np.zeros(len(names))
        assign = np.empty(len(patients), dtype=int)
        for p in order:
            # Relative deficit of each split; tumour counts weigh as much as image counts.
            deficit = (target_img - got_img) / n_img.sum() + (target_pos - got_pos) / n_pos.sum()
            s = int(np.argmax(deficit + rng.uniform(0, 1e-6, len(names))))
            assign[p] = s
            got_img[s] += n_img[p]
            got_pos[s] += n_pos[p]
            got_neg[s] += n_neg[p]
        if (got_pos == 0).any() or (got_neg == 0).any():
            continue
        score = float(
            np.abs(got_img - target_img).sum() / n_img.sum()
            + np.abs(got_pos - target_pos).sum() / n_pos.sum()
        )
        if best is None or score < best[0]:
            best = (score, assign.copy())
    if best is None:
        raise ManifestError(
            f"{manifest.source}: found no patient-grouped split in which every split holds "
            "tumour and benign images; add patients or lower val_fraction/test_fraction"
        )
    parts: dict[str, list[int]] = {n: [] for n in SPLITS}
    for p, s in enumerate(best[1]):
        parts[names[s]].extend(by_patient[patients[p]])
    split = Split(*(tuple(sorted(parts[n])) for n in SPLITS))
    _check_disjoint(manifest, split)
    return split
