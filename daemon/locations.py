"""Where on the specimen a scan was taken: its case folder and margin location.

The first folder under the export root is the case (``<export>/<case>/.../<name>.tif``).
The location is taken, in this order, from

1. a sidecar JSON next to the image, ``<stem>.json`` (or ``<name>.json``, e.g.
   ``LPL_01.tif.json``): an object with at least ``"location"`` (a canonical name such as
   ``"left-posterolateral"``, or an abbreviation such as ``"LPL"``; case, spaces and
   underscores do not matter). Other keys are ignored, so a scanner may add its own;
2. the configured file-name pattern (``cases.filename_pattern``, a regex whose named
   group ``location`` is looked up in ``cases.abbreviations``, or is a canonical name);
3. else ``unspecified``.

A location is only taken when nothing about it is in doubt. A sidecar that is not JSON,
is not an object, lacks ``location`` or names a location outside ``cases.locations``;
a sidecar and a file name that disagree; an image directly in the export root: each
gives ``unspecified`` (or no case) with an ``issue`` a person can act on, and the image
is still assessed. Nothing here raises for bad input, and nothing here logs a name.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass

from marginwatch.engine.config import UNSPECIFIED, CasesConfig
from marginwatch.storage.records import Placement

__all__ = ["MAX_SIDECAR_BYTES", "UNSPECIFIED", "LocationRules", "location_label", "resolve"]

logger = logging.getLogger(__name__)

MAX_SIDECAR_BYTES = 64 * 1024


def location_label(name: str | None) -> str:
    """How a screen names a location: ``left-posterolateral`` -> ``LEFT POSTEROLATERAL``."""
    return (name or UNSPECIFIED).replace("-", " ").upper()


def _text(path: str | bytes) -> str:
    return os.fsdecode(path) if isinstance(path, bytes) else path


@dataclass(frozen=True)
class LocationRules:
    """The location vocabulary, abbreviations and file-name pattern, compiled once."""

    vocabulary: tuple[str, ...]
    abbreviations: Mapping[str, str]  # upper-case abbreviation -> canonical name
    pattern: re.Pattern[str] | None

    @classmethod
    def from_config(cls, config: CasesConfig | None = None) -> LocationRules:
        config = config or CasesConfig()
        pattern = re.compile(config.filename_pattern) if config.filename_pattern else None
        return cls(
            vocabulary=tuple(config.locations),
            abbreviations={k.strip().upper(): v for k, v in config.abbreviations.items()},
            pattern=pattern,
        )

    def canonical(self, said: str) -> str | None:
        """The canonical name for what a sidecar or file name says; None if unknown."""
        value = said.strip()
        name = re.sub(r"[\s_]+", "-", value.lower())
        if name in self.vocabulary:
            return name
        return self.abbreviations.get(value.upper())

    def from_name(self, stem: str) -> tuple[str | None, str | None]:
        """(location, issue) from a file name's stem; (None, None) if it says nothing."""
        if self.pattern is None:
            return None, None
        match = self.pattern.search(stem)
        if match is None or not match.group("location"):
            return None, None
        said = match.group("location")
        found = self.canonical(said)
        if found is None:
            return None, (
                f"the file name gives location {said!r}, which is neither in cases.locations "
                f"nor in cases.abbreviations; add it there or rename the scan"
            )
        return found, None


def _sidecar(folder: str, name: str) -> str | None:
    """The sidecar's path next to ``name`` (``<stem>.json``, then ``<name>.json``)."""
    stem, _ = os.path.splitext(name)
    for candidate in (f"{stem}.json", f"{name}.json"):
        path = os.path.join(folder, candidate)
        if os.path.lexists(path):
            return path
    return None


def _read_sidecar(path: str, root: str, rules: LocationRules) -> tuple[str | None, str | None]:
    """(location, issue) from a sidecar; the issue never carries the file's name."""
    real = os.path.realpath(path)
    if os.path.commonpath([real, root]) != root:
        return None, "the sidecar JSON is a link out of the export folder; refused"
    try:
        if not stat.S_ISREG(os.stat(real).st_mode):  # a FIFO would block the main loop
            return None, "the sidecar JSON is not a regular file; refused"
        with open(real, "rb") as fh:
            raw = fh.read(MAX_SIDECAR_BYTES + 1)
    except OSError as exc:
        return None, f"the sidecar JSON cannot be read ({exc.strerror or type(exc).__name__})"
    if len(raw) > MAX_SIDECAR_BYTES:
        return None, f"the sidecar JSON is larger than {MAX_SIDECAR_BYTES} bytes; refused"
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "the sidecar is not UTF-8 text; re-export it as JSON"
    except json.JSONDecodeError as exc:
        return None, (f"the sidecar is not valid JSON (line {exc.lineno} column {exc.colno}); "
                      "fix or re-export it")
    if not isinstance(data, dict):
        return None, f"the sidecar JSON is a {type(data).__name__}; expected an object"
    said = data.get("location")
    if not isinstance(said, str) or not said.strip():
        return None, (
            f'the sidecar JSON has no "location" text (got {said!r}); '
            'expected e.g. {"location": "left-posterolateral"}'
        )
    found = rules.canonical(said)
    if found is None:
        return None, (
            f"the sidecar gives location {said[:60]!r}, which is not one of "
            f"{', '.join(rules.vocabulary)} (nor an abbreviation); correct the sidecar"
        )
    return found, None


def resolve(root: str, rel_path: str | bytes, rules: LocationRules) -> Placement:
    """The case folder and location of ``rel_path`` under ``root`` (a real path)."""
    text = _text(rel_path)
    parts = [p for p in text.split("/") if p]
    issues: list[str] = []
    folder = parts[0] if len(parts) > 1 else None  # storage keeps any bytes (FsPath)
    if folder is None:
        issues.append(
            "the image lies directly in the export folder, not in a case folder; "
            "export each case into its own folder (<export>/<case>/)"
        )
    name = parts[-1] if parts else text
    abs_dir = os.path.join(root, *parts[:-1])
    sidecar = _sidecar(abs_dir, name)
    by_sidecar, sidecar_issue = (None, None)
    if sidecar is not None:
        by_sidecar, sidecar_issue = _read_sidecar(sidecar, root, rules)
    by_name, name_issue = rules.from_name(os.path.splitext(name)[0])
    location, source = UNSPECIFIED, "default"
    if sidecar_issue is not None:
        issues.append(f"{sidecar_issue}; location set to {UNSPECIFIED}")
        source = "sidecar"
    elif by_sidecar is not None and by_name is not None and by_sidecar != by_name:
        issues.append(
            f"the location is given two ways that disagree: sidecar {by_sidecar}, file name "
            f"{by_name}; location set to {UNSPECIFIED} until they agree"
        )
        source = "conflict"
    elif by_sidecar is not None:
        location, source = by_sidecar, "sidecar"
    elif name_issue is not None:
        issues.append(f"{name_issue}; location set to {UNSPECIFIED}")
        source = "filename"
    elif by_name is not None:
        location, source = by_name, "filename"
    return Placement(
        case_folder=folder, location=location, source=source,
        issue="; ".join(issues) if issues else None,
    )
