"""Training and evaluation manifests: a CSV of labelled images.

Columns (header required, extra columns ignored)::

    path,label,patient_id,centre
    case01/roi_003.tif,tumour,P01,dev

- ``path``: the image file, relative to the manifest's folder (or absolute).
- ``label``: tumour at the margin or not. Accepted spellings (case-insensitive):
  positive = ``tumour``, ``tumor``, ``positive``, ``1``, ``true``;
  negative = ``benign``, ``negative``, ``0``, ``false``.
- ``patient_id``: the patient the image came from; splits and bootstrap CIs are by patient.
- ``centre``: the site (``center`` is accepted too). Optional; defaults to ``unknown``.

Everything wrong with a manifest is collected and raised as ONE
:class:`~marginwatch.engine.errors.ManifestError` before any image is decoded, so a
training run never fails an hour in because of row 212.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from marginwatch.engine.errors import ManifestError

__all__ = ["Manifest", "ManifestRow", "load_manifest", "parse_label"]

POSITIVE = frozenset({"tumour", "tumor", "positive", "1", "true", "malignant"})
NEGATIVE = frozenset({"benign", "negative", "0", "false", "normal"})
_MAX_LISTED = 5


def parse_label(text: str) -> int | None:
    """1 for a positive spelling, 0 for a negative one, None otherwise."""
    value = text.strip().lower()
    if value in POSITIVE:
        return 1
    if value in NEGATIVE:
        return 0
    return None


@dataclass(frozen=True)
class ManifestRow:
    """One labelled image."""

    image: str  # the path as written in the manifest: the image's id in reports
    path: Path  # resolved file path
    label: int  # 1 = tumour at the margin
    patient: str
    centre: str


@dataclass(frozen=True)
class Manifest:
    """The validated rows of one manifest file, in file order."""

    source: Path
    rows: tuple[ManifestRow, ...]
    sha256: str  # of the manifest bytes: the training-data digest in the model card

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.rows]

    @property
    def patients(self) -> list[str]:
        return [r.patient for r in self.rows]

    def subset(self, indices: list[int]) -> Manifest:
        return Manifest(self.source, tuple(self.rows[i] for i in indices), self.sha256)

    def describe(self) -> str:
        n_pos = sum(self.labels)
        return (
            f"{len(self)} images ({n_pos} tumour, {len(self) - n_pos} benign) "
            f"from {len(set(self.patients))} patients"
        )

    def require_both_classes(self, purpose: str) -> None:
        """Raise ManifestError unless positive and negative images are both present."""
        counts = Counter(self.labels)
        if counts[0] == 0 or counts[1] == 0:
            only = "tumour" if counts[0] == 0 else "benign"
            raise ManifestError(
                f"{self.source}: every image is labelled {only}; {purpose} needs "
                "both tumour and benign images"
            )


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return f"{shown}, and {more} more" if more > 0 else shown


def load_manifest(path: str | Path, *, check_files: bool = True) -> Manifest:
    """Read and validate a manifest; raise ManifestError listing every problem found."""
    source = Path(path)
    try:
        data = source.read_bytes()
    except FileNotFoundError as exc:
        raise ManifestError(f"{source}: manifest not found") from exc
    except IsADirectoryError as exc:
        raise ManifestError(f"{source}: is a directory; expected a CSV manifest") from exc
    except PermissionError as exc:
        raise ManifestError(f"{source}: permission denied reading the manifest") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{source}: not UTF-8 text; expected a CSV manifest") from exc

    reader = csv.DictReader(text.splitlines())
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    if "center" in header and "centre" not in header:
        header[header.index("center")] = "centre"
    missing = [c for c in ("path", "label", "patient_id") if c not in header]
    if missing:
        raise ManifestError(
            f"{source}: missing column(s) {', '.join(missing)}; expected a header "
            f"'path,label,patient_id,centre', got {','.join(header) or '<empty>'}"
        )

    base = source.parent
    rows: list[ManifestRow] = []
    problems: dict[str, list[str]] = defaultdict(list)
    seen: set[Path] = set()
    for line, raw in enumerate(reader, start=2):
        image = (raw.get("path") or "").strip()
        label_text = (raw.get("label") or "").strip()
        patient = (raw.get("patient_id") or "").strip()
        centre = (raw.get("centre") or "").strip() or "unknown"
        if not image:
            problems["empty path"].append(f"line {line}")
            continue
        if not patient:
            problems["empty patient_id"].append(f"line {line}")
        label = parse_label(label_text)
        if label is None:
            problems["unknown label"].append(f"line {line}: {label_text!r}")
        file = Path(image) if Path(image).is_absolute() else base / image
        if file in seen:
            problems["listed twice"].append(f"line {line}: {image}")
        seen.add(file)
        if check_files and not file.is_file():
            problems["missing file"].append(f"line {line}: {image}")
        if label is not None and patient:
            rows.append(ManifestRow(image, file, label, patient, centre))

    if not rows and not problems:
        raise ManifestError(f"{source}: no images listed")

    centres: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        centres[row.patient].add(row.centre)
    for patient, where in sorted(centres.items()):
        if len(where) > 1:
            problems["patient in two centres"].append(f"{patient}: {', '.join(sorted(where))}")

    if problems:
        parts = [f"{len(items)} {kind} ({_listed(items)})" for kind, items in problems.items()]
        hint = ""
        if "unknown label" in problems:
            hint = f"; labels must be one of {sorted(POSITIVE | NEGATIVE)}"
        raise ManifestError(f"{source}: {'; '.join(parts)}{hint}")
    return Manifest(source, tuple(rows), hashlib.sha256(data).hexdigest())
