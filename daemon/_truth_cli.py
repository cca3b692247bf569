"""``marginwatch truth import FILE.csv --by NAME [--skip-bad]``: histopathology in.

A row names one image and its final margin status:

- key: ``path`` (relative to the export root, POSIX separators), ``sha256`` (the
  image's content SHA-256), or ``image`` (either: 64 hex digits are a SHA-256); or
  ``case`` (the case folder) + ``location`` (a margin location of the configured
  vocabulary, or one of its abbreviations), which names every image of that location;
- ``status``: ``tumour`` (tumour at the margin) or ``clear`` (no tumour at the margin);
  a training manifest's ``label`` column (``tumour``/``benign``, as ``marginwatch
  synth`` writes) is accepted instead;
- optional ``reported_by``, ``report_date`` (YYYY-MM-DD) and ``note``.

The other columns of a manifest (``patient_id``, ``centre``, ``kind``, ``profile``,
``um_per_px``) are accepted and not used (so are ``case``/``location`` on a row keyed
by path or SHA-256); any other column is refused. Every row is checked first, keys
included (a key must match a recorded image; a key twice in one file is refused): one
line per bad row naming the file, the line, the field, the value and what was
expected. Nothing is written unless every row is good, or with ``--skip-bad`` (the
good rows are written, the rest reported).
Writing goes through :meth:`Store.import_truth` (audited; a changed status is a
correction with both values in the audit trail). Re-importing a file changes nothing
and says so.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path, PurePosixPath
from typing import Any

from marginwatch.engine.errors import ConfigError, ManifestError

__all__ = ["TruthFile", "TruthProblem", "read_truth_file", "truth_import"]

KEY_COLUMNS = ("path", "sha256", "image")
PAIR_COLUMNS = ("case", "location")  # together, a key naming a margin location's images
STATUS_COLUMNS = ("status", "label")
DETAIL_COLUMNS = ("reported_by", "report_date", "note")
#: accepted and not used: the rest of a training manifest
IGNORED_COLUMNS = ("patient_id", "centre", "kind", "profile", "um_per_px")
KNOWN_COLUMNS = KEY_COLUMNS + PAIR_COLUMNS + STATUS_COLUMNS + DETAIL_COLUMNS + IGNORED_COLUMNS

TUMOUR = frozenset({"tumour", "tumor", "tumour at margin", "tumor at margin", "positive", "1"})
CLEAR = frozenset({"clear", "no tumour at margin", "no tumor at margin", "negative", "0"})
#: a training manifest's label column: tumour/benign (tools/_manifest.py spellings)
LABEL_TUMOUR = TUMOUR | {"true", "malignant"}
LABEL_CLEAR = CLEAR | {"benign", "false", "normal"}
_SHA = re.compile(r"^[0-9a-fA-F]{64}$")


@dataclass(frozen=True)
class TruthProblem:
    """One bad row (or header): rendered ``FILE:LINE: field F: value 'V'; expected E``."""

    line: int
    field: str
    value: str
    expected: str

    def render(self, source: str) -> str:
        return f"{source}:{self.line}: field {self.field}: {self.value!r}; {self.expected}"


@dataclass
class _Row:
    line: int
    key_field: str  # "path" | "sha256" | "case+location"
    key: str  # for case+location: "<case>\x00<location>"
    status: str
    reported_by: str | None
    report_date: date | None
    note: str | None


@dataclass
class TruthFile:
    """A parsed file: its rows (syntax checked) and problems, before keys are resolved."""

    source: Path
    sha256: str
    rows: list[_Row] = field(default_factory=list)
    problems: list[TruthProblem] = field(default_factory=list)


def _status(value: str, column: str) -> str | None:
    text = " ".join(value.strip().lower().split())
    tumour, clear = (TUMOUR, CLEAR) if column == "status" else (LABEL_TUMOUR, LABEL_CLEAR)
    if text in tumour:
        return "tumour"
    if text in clear:
        return "clear"
    return None


def _path_key(value: str) -> str | None:
    """A path relative to the export root in POSIX form, or None if it is not one."""
    text = value.strip().replace("\\", "/")
    if not text or text.startswith("/") or re.match(r"^[A-Za-z]:/", text):
        return None
    parts = [p for p in PurePosixPath(text).parts if p != "."]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def _read_text(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: ground-truth file not found") from exc
    except IsADirectoryError as exc:
        raise ManifestError(f"{path}: is a directory; expected a CSV file") from exc
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read ({exc.strerror or exc})") from exc


def read_truth_file(path: Path, rules: Any = None) -> TruthFile:
    """Parse and check every row's syntax; header problems raise ManifestError.

    ``rules`` (daemon.locations.LocationRules) canonicalises case + location keys.
    """
    raw = _read_text(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text; expected a CSV file") from exc
    out = TruthFile(source=path, sha256=hashlib.sha256(raw).hexdigest())
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [(h or "").strip().lower() for h in (reader.fieldnames or [])]
    if not header:
        raise ManifestError(f"{path}:1: empty file; expected a CSV header with a key column "
                            f"({', '.join(KEY_COLUMNS)}) and status (or label)")
    unknown = [h for h in header if h not in KNOWN_COLUMNS]
    if unknown:
        raise ManifestError(f"{path}:1: unknown column {unknown[0]!r}; expected columns from "
                            f"{', '.join(KNOWN_COLUMNS)}")
    if len(set(header)) != len(header):
        twice = next(h for h in header if header.count(h) > 1)
        raise ManifestError(f"{path}:1: column {twice!r} appears twice")
    keys = [h for h in KEY_COLUMNS if h in header]
    pair = all(h in header for h in PAIR_COLUMNS)
    statuses = [h for h in STATUS_COLUMNS if h in header]
    if not keys and not pair:
        raise ManifestError(f"{path}:1: no key column; expected one of {', '.join(KEY_COLUMNS)}, "
                            "or case and location together")
    if len(statuses) != 1:
        raise ManifestError(f"{path}:1: expected exactly one of the columns status or label; "
                            f"found {', '.join(statuses) or 'neither'}")
    reader.fieldnames = header
    for line_no, record in enumerate(reader, start=2):
        if None in record:  # more cells than header columns
            out.problems.append(TruthProblem(line_no, "(row)", ",".join(record[None]),
                                             f"expected {len(header)} columns"))
            continue
        row = _parse_row(line_no, record, keys, pair, statuses[0], out.problems, rules)
        if row is not None:
            out.rows.append(row)
    return out


def _pair_key(line: int, cells: dict[str, str], rules: Any,
              problems: list[TruthProblem]) -> str:
    case, said = cells.get("case", ""), cells.get("location", "")
    if not case or not said:
        missing = "case" if not case else "location"
        problems.append(TruthProblem(line, missing, "", "expected an image path or SHA-256, "
                                     "or both case and location (missing key)"))
        return ""
    if rules is None:
        from marginwatch.daemon.locations import LocationRules

        rules = LocationRules.from_config()
    location = rules.canonical(said)
    if location is None:
        problems.append(TruthProblem(line, "location", said, "unknown location; expected one "
                                     f"of {', '.join(rules.vocabulary)} or an abbreviation"))
        return ""
    return f"{case}\x00{location}"


def _parse_row(
    line: int, record: dict[str, Any], keys: list[str], pair: bool, status_column: str,
    problems: list[TruthProblem], rules: Any = None,
) -> _Row | None:
    cells = {k: (v or "").strip() for k, v in record.items()}
    given = [k for k in keys if cells.get(k)]
    before = len(problems)
    key_field, key = "", ""
    if not given and pair:
        key_field, key = "case+location", _pair_key(line, cells, rules, problems)
    elif not given:
        problems.append(TruthProblem(line, keys[0], "", "expected an image path relative to "
                                     "the export root or its content SHA-256 (missing key)"))
    elif len(given) > 1:
        problems.append(TruthProblem(line, given[1], cells[given[1]],
                                     f"expected one key per row; {given[0]} is given too"))
    else:
        column, value = given[0], cells[given[0]]
        if column == "sha256" or (column == "image" and _SHA.match(value)):
            if not _SHA.match(value):
                problems.append(TruthProblem(line, column, value, "expected 64 hex digits"))
            key_field, key = "sha256", value.lower()
        else:
            path = _path_key(value)
            if path is None:
                problems.append(TruthProblem(line, column, value,
                                             "expected a path relative to the export root"))
            key_field, key = "path", path or ""
    status = _status(cells.get(status_column, ""), status_column)
    if status is None:
        expected = ("expected tumour or clear" if status_column == "status"
                    else "expected tumour or benign")
        problems.append(TruthProblem(line, status_column, cells.get(status_column, ""),
                                     f"unknown status; {expected}"))
    report_date = None
    if cells.get("report_date"):
        try:
            report_date = date.fromisoformat(cells["report_date"])
        except ValueError:
            problems.append(TruthProblem(line, "report_date", cells["report_date"],
                                         "expected a date YYYY-MM-DD"))
    if len(problems) > before:
        return None
    assert status is not None
    return _Row(line, key_field, key, status, cells.get("reported_by") or None, report_date,
                cells.get("note") or None)


def _resolve(parsed: TruthFile, store: Any) -> list[Any]:
    """TruthEntry per good row; key problems appended to ``parsed.problems``."""
    from marginwatch.storage import TruthEntry

    by_path, by_sha, by_pair = store.images_for_keys(
        paths=[r.key for r in parsed.rows if r.key_field == "path"],
        sha256s=[r.key for r in parsed.rows if r.key_field == "sha256"],
        case_locations=[tuple(r.key.split("\x00")) for r in parsed.rows
                        if r.key_field == "case+location"],
    )
    found: dict[str, Any] = {"path": by_path, "sha256": by_sha,
                             "case+location": {"\x00".join(k): v for k, v in by_pair.items()}}
    entries = []
    seen_key: dict[tuple[str, str], int] = {}
    seen_image: dict[str, int] = {}
    for row in parsed.rows:
        column = "case+location" if row.key_field == "case+location" else row.key_field
        shown = row.key.replace("\x00", " + ")
        earlier = seen_key.get((row.key_field, row.key))
        if earlier is not None:
            parsed.problems.append(TruthProblem(row.line, column, shown,
                                                f"duplicate key; line {earlier} has it already"))
            continue
        seen_key[(row.key_field, row.key)] = row.line
        images = found[row.key_field].get(row.key, [])
        if not images:
            parsed.problems.append(TruthProblem(row.line, column, shown,
                                                "matches no image in the database"))
            continue
        roots = sorted({i.root_key for i in images})
        if row.key_field != "sha256" and len(roots) > 1:
            parsed.problems.append(TruthProblem(
                row.line, column, shown,
                f"matches images in {len(roots)} export roots; give the content SHA-256"))
            continue
        clash = next((seen_image[i.image_id] for i in images if i.image_id in seen_image), None)
        if clash is not None:
            parsed.problems.append(TruthProblem(row.line, column, shown,
                                                f"duplicate: the same image as line {clash}"))
            continue
        for i in images:
            seen_image[i.image_id] = row.line
        entries.append(TruthEntry(
            line=row.line, key=shown, image_ids=tuple(sorted(i.image_id for i in images)),
            status=row.status, reported_by=row.reported_by, report_date=row.report_date,
            note=row.note,
        ))
    parsed.problems.sort(key=lambda p: p.line)
    return entries


def truth_import(
    file: Path,
    *,
    by: str,
    skip_bad: bool,
    db: str | None,
    config_path: Path | None,
    echo: Callable[[str], Any] = print,
    err: Callable[[str], Any] = print,
) -> int:
    """The command: 0 written (or nothing to change), 2 bad rows and nothing written."""
    from marginwatch.daemon.locations import LocationRules
    from marginwatch.engine.config import load_config
    from marginwatch.storage import Store

    if not by.strip():
        raise ConfigError("--by must name who imports the ground truth")
    config = load_config(config_path)
    parsed = read_truth_file(file, LocationRules.from_config(config.cases))
    url = db or config.daemon.resolved_db_url()
    with Store.open(url, busy_timeout_seconds=config.daemon.db_busy_timeout_seconds) as store:
        entries = _resolve(parsed, store)
        for problem in parsed.problems:
            err(f"marginwatch: error: {problem.render(str(file))}")
        rows = len(parsed.rows) + sum(1 for p in parsed.problems if p.field == "(row)")
        if parsed.problems and not skip_bad:
            err(f"marginwatch: error: {file}: {len(parsed.problems)} bad row(s); nothing "
                "written (fix them, or pass --skip-bad to write the good rows)")
            return 2
        if not entries:
            echo(f"{file}: no good rows; nothing written")
            return 0
        result = store.import_truth(entries, source_sha256=parsed.sha256,
                                    source_name=file.name, actor=by.strip())
    skipped = f", {len(parsed.problems)} bad row(s) skipped" if parsed.problems else ""
    if not result.changed:
        echo(f"{file}: nothing changed: all {len(entries)} row(s) match the recorded ground "
             f"truth{skipped}")
        return 0
    echo(f"{file}: {rows} row(s): {result.added} added, {result.corrected} corrected, "
         f"{result.updated} updated, {result.unchanged} unchanged{skipped}")
    for image_id, old, new, line in result.corrections:
        echo(f"  correction (line {line}): image {image_id[:8]} {old} -> {new} "
             "(both values in the audit trail)")
    return 0
