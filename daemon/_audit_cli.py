"""The ``marginwatch audit`` commands (called from cli.py); ``db`` is in :mod:`._db_cli`.

Auditor commands open the database read-only (``mode=ro`` on SQLite, a read-only
session on PostgreSQL): they cannot change what they inspect. All queries live in
:mod:`marginwatch.storage`; this module only parses options and formats output.
Imports no torch (``marginwatch audit --help`` stays light).
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Iterable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from marginwatch.engine.errors import ConfigError, NotFoundError

from ._quality_text import quality_summary, quality_table

__all__ = [
    "audit_export",
    "audit_list",
    "audit_show",
    "audit_verify",
    "parse_when",
]

LIST_COLUMNS = (
    "image_id",
    "first_seen",
    "state",
    "probability",
    "decision",
    "threshold",
    "alert_kind",
    "acknowledged_by",
    "backend",
    "model_digest",
    "sha256",
    "attempts",
    "error_class",
    "error_message",
    "finished_at",
    "rel_path",
    "previous_image_id",
)
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def _resolve(db: str | None, config: Path | None) -> tuple[str, float]:
    from marginwatch.engine.config import load_config

    cfg = load_config(config)
    return (db or cfg.daemon.resolved_db_url()), cfg.daemon.db_busy_timeout_seconds


def _open(db: str | None, config: Path | None, *, readonly: bool, upgrade: bool = False) -> Any:
    from marginwatch.storage import Store

    url, busy = _resolve(db, config)
    return Store.open(url, readonly=readonly, upgrade=upgrade, busy_timeout_seconds=busy)


def parse_when(value: str | None, option: str, now: datetime | None = None) -> datetime | None:
    """ISO date/time (naive = UTC) or a duration ago: ``90m``, ``24h``, ``7d``, ``2w``."""
    if value is None:
        return None
    text = value.strip()
    match = _RELATIVE.match(text)
    if match:
        delta = timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
        return (now or datetime.now(UTC)) - delta
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"{option} {value!r}: expected an ISO date/time (2026-05-01, "
            f"2026-05-01T14:30) or a duration ago (90m, 24h, 7d)"
        ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _decision(value: str | None) -> bool | None:
    if value is None:
        return None
    table = {
        "positive": True,
        "pos": True,
        "true": True,
        "1": True,
        "negative": False,
        "neg": False,
        "false": False,
        "0": False,
    }
    try:
        return table[value.strip().lower()]
    except KeyError:
        raise ConfigError(f"--decision {value!r}: expected positive or negative") from None


def _cell(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    if isinstance(value, bool):
        return "positive" if value else "negative"
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else value


def _row_dict(row: Any) -> dict[str, Any]:
    from marginwatch.engine.pathnames import display_path

    data = asdict(row)
    data["rel_path"] = display_path(data["rel_path"])  # any bytes; one printable line
    return {name: data[name] for name in LIST_COLUMNS}


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return None
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _write_rows(rows: Iterable[Any], fmt: str, out: IO[str]) -> None:
    rows = list(rows)
    if fmt == "json":
        json.dump([_row_dict(r) for r in rows], out, default=_json_default, indent=2)
        out.write("\n")
    elif fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(LIST_COLUMNS)
        for row in rows:
            data = _row_dict(row)
            writer.writerow(
                [
                    data[c].isoformat()
                    if isinstance(data[c], datetime)
                    else ("" if data[c] is None else data[c])
                    for c in LIST_COLUMNS
                ]
            )
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{len(rows)} image(s) — research use, not a medical device")
        shown = (
            "image_id",
            "first_seen",
            "state",
            "probability",
            "decision",
            "alert_kind",
            "acknowledged_by",
            "rel_path",
        )
        for name in shown:
            table.add_column(name)
        for row in rows:
            data = _row_dict(row)
            data["image_id"] = str(data["image_id"])[:8]
            if data["previous_image_id"]:  # a new version of a file seen before
                earlier = str(data["previous_image_id"])[:8]
                data["rel_path"] = f"{data['rel_path']} (new version of {earlier})"
            table.add_row(*(str(_cell(data[name])) for name in shown))
        Console(file=out, width=160 if not out.isatty() else None).print(table)


def audit_list(
    db: str | None,
    config: Path | None,
    since: str | None,
    until: str | None,
    decision: str | None,
    kind: str | None,
    fmt: str,
) -> None:
    if fmt not in ("table", "csv", "json"):
        raise ConfigError(f"--format {fmt!r}: expected table, csv or json")
    if kind is not None and kind not in ("tumour-at-margin", "not-assessed"):
        raise ConfigError(f"--kind {kind!r}: expected tumour-at-margin or not-assessed")
    when_from, when_to, wanted = (
        parse_when(since, "--since"),
        parse_when(until, "--until"),
        _decision(decision),
    )
    with _open(db, config, readonly=True) as store:
        rows = store.list_images(
            since=when_from, until=when_to, decision=wanted, kind=kind, newest_first=False
        )
    _write_rows(rows, fmt, sys.stdout)


def _detail_dict(detail: Any) -> dict[str, Any]:
    data = asdict(detail)
    data.pop("heatmap_png", None)
    data["has_heatmap"] = detail.heatmap_png is not None
    return data


def audit_show(
    db: str | None, config: Path | None, image_id: str, cam: Path | None, fmt: str = "text"
) -> None:
    with _open(db, config, readonly=True) as store:
        detail = store.image_detail(image_id)
    if cam is not None:
        if detail.heatmap_png is None:
            raise NotFoundError(
                f"image {detail.row.image_id}: no heatmap recorded (state {detail.row.state})"
            )
        from marginwatch.engine.render import decode_heatmap_png, heatmap_overlay_png

        try:
            cam.write_bytes(heatmap_overlay_png(decode_heatmap_png(detail.heatmap_png)))
        except OSError as exc:
            raise ConfigError(f"{cam}: cannot write the heatmap ({exc.strerror})") from exc
    if fmt == "json":
        json.dump(_detail_dict(detail), sys.stdout, default=_json_default, indent=2)
        sys.stdout.write("\n")
        return
    sys.stdout.write(_format_detail(detail, cam))


def _format_detail(d: Any, cam: Path | None) -> str:
    from marginwatch.engine.pathnames import display_path

    r = d.row
    out = io.StringIO()
    w = out.write
    w(f"image {r.image_id}  (research use, not a medical device)\n")
    w(f"  file          {display_path(d.root_key)}:{display_path(r.rel_path)}\n")
    w(f"  size / mtime  {d.size} bytes, mtime_ns {d.mtime_ns}\n")
    w(f"  sha256        {r.sha256 or '-'}\n")
    w(f"  first seen    {_cell(r.first_seen)}\n")
    if r.previous_image_id is not None:  # a changed file: this is a new version
        w(f"  version of    image {r.previous_image_id} (the same file before it changed)\n")
    w(f"  state         {r.state} (attempts {r.attempts})\n")
    if r.error_class:
        w(f"  error         {r.error_class}: {r.error_message}\n")
    if d.shape is not None:
        w(
            f"  shape         {tuple(d.shape)}  {d.um_per_px} um/px ({d.um_per_px_source}), "
            f"profile {d.profile}\n"
        )
    if r.prediction_id is not None:
        w(f"  model         {d.model_architecture} {r.model_digest}\n")
        w(f"  backend       {r.backend} on {d.device} ({d.precision})\n")
        w(
            f"  probability   {r.probability:.4f} calibrated, {d.raw_probability:.4f} raw; "
            f"threshold {r.threshold:.4f}\n"
        )
        dup = f"  (duplicate of prediction {r.prediction_id})" if r.state == "duplicate" else ""
        w(f"  decision      {'TUMOUR AT MARGIN' if r.decision else 'negative'}{dup}\n")
        timings = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in d.timings.items())
        w(f"  timings       {timings or '-'}\n")
        w(
            f"  heatmap       {'yes' if d.heatmap_png else 'no'}"
            f"{'' if d.heatmap_scale is None else f', {d.heatmap_scale:g} source px per px'}"
            f"{f', written to {cam}' if cam else ''}\n"
        )
        w(f"  tiles         {len(d.tiles)}\n")
        for i, tile in enumerate(d.tiles):
            mark = "  <- driving" if i == d.driving_tile else ""
            w(f"    {i:4d}  box {tile.box}  p={tile.probability:.4f}{mark}\n")
    if d.quality:
        w(f"  quality       {quality_summary(d.quality)}\n")
        for line in quality_table(d.quality):
            w(f"    {line}\n")
    for alert in d.alerts:
        ack = (
            f"acknowledged by {alert.acknowledged_by} at {_cell(alert.acknowledged_at)}"
            + (f" ({alert.ack_note})" if alert.ack_note else "")
            if alert.acknowledged_at
            else "NOT acknowledged"
        )
        w(f"  alert {alert.id:<6d}{alert.kind} at {_cell(alert.raised_at)}: {ack}\n")
    w(f"  audit events  {len(d.events)}\n")
    for e in d.events:
        w(
            f"    #{e.seq:<6d}{_cell(e.ts)}  {e.action:<22s} by {e.actor}  "
            f"{json.dumps(e.payload, sort_keys=True)}\n"
        )
    return out.getvalue()


def audit_export(db: str | None, config: Path | None, fmt: str, out_path: Path) -> None:
    if fmt not in ("csv", "json"):
        raise ConfigError(f"--format {fmt!r}: expected csv or json")
    with _open(db, config, readonly=True) as store:
        rows = store.list_images(newest_first=False)
        if fmt == "json":
            report = store.verify_audit()
            body: dict[str, Any] = {
                "exported_at": datetime.now(UTC).isoformat(),
                "database": store.location,
                "note": "research use, not a medical device",
                "audit_chain": asdict(report),
                "images": [_detail_dict(store.image_detail(r.image_id)) for r in rows],
                "audit_events": [asdict(e) for e in store.audit_events()],
            }
    buffer = io.StringIO()
    if fmt == "json":
        json.dump(body, buffer, default=_json_default, indent=2)
        buffer.write("\n")
    else:
        _write_rows(rows, "csv", buffer)
    if str(out_path) == "-":
        sys.stdout.write(buffer.getvalue())
        return
    try:
        out_path.write_text(buffer.getvalue(), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{out_path}: cannot write the export ({exc.strerror})") from exc
    print(f"exported {len(rows)} image(s) to {out_path}", file=sys.stderr)


def audit_verify(db: str | None, config: Path | None, anchor: Path | None) -> int:
    """0 when the chain, the clinical rows and the anchor are intact, else 1.

    Without ``--anchor`` the daemon's own anchor (``daemon.anchor_file``, default beside
    the SQLite file) is checked when it exists, and left as it is.
    """
    from marginwatch.engine.config import load_config
    from marginwatch.storage import AuditAnchor

    with _open(db, config, readonly=True) as store:
        kept = None
        if anchor is None:
            daemon = load_config(config).daemon
            kept = daemon.anchor_file or store.default_anchor_path(daemon.state_dir)
        existed = anchor is not None and anchor.exists()
        check = anchor if existed else (kept if kept is not None and kept.exists() else None)
        report = store.verify_audit(check)
        where = store.location
    if not report.ok:
        if report.bad_row is not None:
            print(f"{where}: clinical record {report.bad_row} DISAGREES with the audit chain: "
                  f"{report.reason}")
        else:
            print(
                f"{where}: audit chain BROKEN at event seq {report.first_bad_seq}: "
                f"{report.reason} ({report.events} event(s) verified before it)"
            )
        if check is not None and report.anchor_checked:
            print(f"{check}: anchor checked")
        return 1
    legacy = (f"; {report.rows_legacy} older row(s) carry no digest" if report.rows_legacy
              else "")
    print(
        f"{where}: audit chain intact: {report.events} event(s), head seq {report.head_seq} "
        f"hash {report.head_hash}; {report.rows_checked} clinical row(s) match their "
        f"digests{legacy}"
    )
    if kept is not None and check is not None:
        print(f"{check}: the daemon's anchor is in the chain")
    if anchor is not None:
        try:
            AuditAnchor(report.head_seq, report.head_hash).write(anchor)
        except OSError as exc:
            raise ConfigError(f"{anchor}: cannot write the anchor ({exc.strerror})") from exc
        print(
            f"{anchor}: anchor {'matched and advanced' if existed else 'written'} "
            f"to seq {report.head_seq}"
        )
    return 0
