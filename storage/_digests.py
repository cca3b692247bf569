"""Digests of the clinical rows, so the audit chain covers them and not only itself.

Every event that records a clinical row carries ``"digests": {"<table>/<id>": sha256}``:
``image.assessed`` for the prediction, its tiles (one digest over all of them, by
``idx``) and its heatmap; ``alert.raised`` and ``alert.acknowledged`` for the alert
as it stands after the event; ``truth.recorded``/``corrected``/``updated`` for the
image's ground truth as it stands after the import. A digest is the SHA-256 of the
canonical JSON of the row's columns (times as UTC text, bytes by their own SHA-256).

:func:`check_rows` recomputes them from the rows as they are now: a row edited after
its event, deleted, or inserted without one is named, with the event that recorded it.
Rows older than the first digest of their table (recorded before digests existed) are
counted, not judged. The append-only triggers (migration 0003) refuse such edits in the
first place; the digests are what shows one made around them.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Boolean, Float, Integer, select
from sqlalchemy.orm import Session

from .models import Alert, Base, GroundTruth, Heatmap, Prediction, Tile

__all__ = [
    "DIGEST_TABLES",
    "RowProblem",
    "alert_digests",
    "assessment_digests",
    "check_rows",
    "row_digest",
    "truth_digests",
]

#: the tables whose rows the chain covers, in the order verify reports them.
DIGEST_TABLES = ("predictions", "tiles", "heatmaps", "alerts", "ground_truth")
_TEXT_KEYS = ("ground_truth",)  # keyed by image id (text), not by an increasing integer


def _value(value: Any, kind: Any) -> Any:
    """One column's value as the database gives it back, by the column's type."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, bytes | bytearray | memoryview):
        return "sha256:" + hashlib.sha256(bytes(value)).hexdigest()
    if isinstance(kind, Boolean):
        return bool(value)
    if isinstance(kind, Float):
        return float.__repr__(float(value))  # exact; NaN/inf never make the JSON fail
    if isinstance(kind, Integer):  # BigInteger too
        return int(value)
    return str(value)


def _fields(row: Base | Mapping[str, Any], model: type[Base] | None = None) -> dict[str, Any]:
    """A row's columns by their types: an ORM object, or a mapping of ``model``'s columns
    (the values a bulk INSERT wrote, with the ids it returned)."""
    get = row.__getitem__ if isinstance(row, Mapping) else lambda key: getattr(row, key)
    mapper = (model or type(row)).__mapper__
    return {attr.key: _value(get(attr.key), attr.columns[0].type) for attr in mapper.column_attrs}


def _hash(content: Any) -> str:
    from .audit import canonical_json

    return hashlib.sha256(canonical_json(content).encode("utf-8")).hexdigest()


def row_digest(row: Base | Mapping[str, Any], model: type[Base] | None = None) -> str:
    """SHA-256 of one row's columns: an ORM object, or a mapping of ``model``'s columns."""
    return _hash(_fields(row, model))


def _tiles_digest(tiles: Iterable[Tile | Mapping[str, Any]]) -> str:
    fields = [_fields(t, Tile) for t in tiles]
    return _hash(sorted(fields, key=lambda f: f["idx"]))


def _id(row: Base | Mapping[str, Any]) -> Any:
    return row["id"] if isinstance(row, Mapping) else row.id  # type: ignore[attr-defined]


def assessment_digests(
    prediction: Prediction | Mapping[str, Any],
    tiles: Iterable[Tile | Mapping[str, Any]],
    heatmap: Heatmap | Mapping[str, Any] | None,
) -> dict[str, str]:
    """The ``digests`` of an ``image.assessed`` event: rows as written, ids assigned.

    Each row is an ORM object or a mapping of every one of its table's columns (the
    values an INSERT wrote, with the id it returned).
    """
    pid = _id(prediction)
    out = {
        f"predictions/{pid}": row_digest(prediction, Prediction),
        f"tiles/{pid}": _tiles_digest(tiles),
    }
    if heatmap is not None:
        out[f"heatmaps/{pid}"] = row_digest(heatmap, Heatmap)
    return out


def alert_digests(alert: Alert | Mapping[str, Any]) -> dict[str, str]:
    """The ``digests`` of an ``alert.raised``/``alert.acknowledged`` event."""
    return {f"alerts/{_id(alert)}": row_digest(alert, Alert)}


@dataclass(frozen=True)
class RowProblem:
    """A clinical row that disagrees with the chain; ``seq`` is the event that recorded it."""

    row: str  # "<table>/<id>" (tiles and heatmaps by their prediction id)
    seq: int | None
    reason: str


@dataclass(frozen=True)
class RowCheck:
    checked: int
    legacy: int
    problem: RowProblem | None


def truth_digests(row: GroundTruth) -> dict[str, str]:
    """The ``digests`` of a ``truth.recorded/corrected/updated`` event (row flushed)."""
    return {f"ground_truth/{row.image_id}": row_digest(row)}


def _current(session: Session, table: str) -> Iterator[tuple[int | str, str]]:
    """(id, digest) of every row of ``table`` now, by id (tiles grouped per prediction)."""
    if table == "tiles":
        rows = session.scalars(select(Tile).order_by(Tile.prediction_id, Tile.idx))
        for pid, group in itertools.groupby(rows.yield_per(2000), key=lambda t: t.prediction_id):
            yield pid, _tiles_digest(group)
        return
    model, key = {
        "predictions": (Prediction, Prediction.id),
        "heatmaps": (Heatmap, Heatmap.prediction_id),
        "alerts": (Alert, Alert.id),
        "ground_truth": (GroundTruth, GroundTruth.image_id),
    }[table]
    for row in session.scalars(select(model).order_by(key)).yield_per(500):
        yield getattr(row, key.key), row_digest(row)


def check_rows(session: Session, recorded: Mapping[str, tuple[int, str]]) -> RowCheck:
    """Compare every clinical row with the latest digest the chain recorded for it.

    ``recorded`` maps ``"<table>/<id>"`` to ``(event seq, digest)``. The problem
    returned is the one whose recording event came first (the earliest damage).
    """
    problems: list[RowProblem] = []
    checked = legacy = 0
    for table in DIGEST_TABLES:
        key = str if table in _TEXT_KEYS else int
        wanted = {key(k.split("/", 1)[1]): v for k, v in recorded.items()
                  if k.split("/", 1)[0] == table}
        first_covered = min(wanted, default=None)
        seen: set[int | str] = set()
        for row_id, digest in _current(session, table):
            seen.add(row_id)
            if row_id not in wanted:
                if first_covered is None or (key is int and row_id < first_covered):
                    legacy += 1
                    continue
                problems.append(RowProblem(f"{table}/{row_id}", None,
                                           "no audit event records this row (inserted outside "
                                           "marginwatch)"))
                continue
            checked += 1
            seq, expected = wanted[row_id]
            if digest != expected:
                problems.append(RowProblem(f"{table}/{row_id}", seq,
                                           f"row differs from the digest recorded by event seq "
                                           f"{seq} (edited after it was recorded)"))
        for row_id in sorted(set(wanted) - seen, key=str):
            seq, _ = wanted[row_id]
            problems.append(RowProblem(f"{table}/{row_id}", seq,
                                       f"row recorded by event seq {seq} is gone (deleted)"))
    problems.sort(key=lambda p: (p.seq is None, p.seq or 0, p.row))
    return RowCheck(checked=checked, legacy=legacy, problem=problems[0] if problems else None)
