"""Margin locations for synthetic cases: in the file names and in sidecar JSON files.

A synthetic case is scanned face by face, in :data:`SCAN_ORDER` (apex, base, then the
posterolateral, anterolateral, anterior and posterior faces), again from the start when
a case has more scans than faces. Scan ``k`` of case ``dev-03`` is named
``dev-03/dev-03-00k_<ABBR>.tif`` (``LPL``, ``APEX``, ...), which the default
``cases.filename_pattern`` reads; every second scan also gets a sidecar
``dev-03-00k_<ABBR>.json`` with ``{"location": "<canonical name>", ...}``, so both ways
into the daemon are exercised. The two always agree.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["ABBREVIATION", "SCAN_ORDER", "has_sidecar", "location_of", "scan_name",
           "write_sidecar", "write_sidecars"]

#: the order in which a synthetic specimen's faces are scanned.
SCAN_ORDER = (
    "apex",
    "base",
    "left-posterolateral",
    "right-posterolateral",
    "left-anterolateral",
    "right-anterolateral",
    "anterior",
    "posterior",
)
ABBREVIATION = {
    "apex": "APEX",
    "base": "BASE",
    "left-posterolateral": "LPL",
    "right-posterolateral": "RPL",
    "left-anterolateral": "LAL",
    "right-anterolateral": "RAL",
    "anterior": "ANT",
    "posterior": "POST",
}


def location_of(scan: int) -> str:
    """The face that the ``scan``-th scan (1-based) of a case shows."""
    return SCAN_ORDER[(scan - 1) % len(SCAN_ORDER)]


def scan_name(case: str, scan: int, stem: str | None = None, suffix: str = ".tif") -> str:
    """``<case>/<stem>-<scan:03d>_<ABBR><suffix>`` (``stem`` defaults to the case)."""
    return f"{case}/{stem or case}-{scan:03d}_{ABBREVIATION[location_of(scan)]}{suffix}"


def has_sidecar(scan: int) -> bool:
    return scan % 2 == 0


def write_sidecar(image_path: str | os.PathLike[str], location: str, **extra: object) -> Path:
    """``<stem>.json`` next to the image: ``{"location": ..., "synthetic": true, ...}``.

    Written to a temporary name and renamed, as a scanner would, so the daemon never
    reads half a sidecar.
    """
    image = Path(image_path)
    path = image.with_suffix(".json")
    temp = path.with_name(f".{path.name}.part")
    body = {"location": location, "synthetic": True, **extra}
    temp.write_text(json.dumps(body, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temp, path)
    return path


def write_sidecars(out: str | os.PathLike[str], rel_paths: Iterable[str]) -> int:
    """Sidecars for every second scan of each case (see the module docstring); how many."""
    written = 0
    for rel in rel_paths:
        case, _, name = rel.partition("/")
        scan = int(name.rpartition("_")[0][-3:])  # <stem>-<scan:03d>_<ABBR>.tif
        if has_sidecar(scan):
            write_sidecar(Path(out) / rel, location_of(scan), case=case, scan=scan)
            written += 1
    return written
