"""The ``marginwatch case`` commands (called from cli.py): list, show, close, report.

``list``, ``show`` and ``report`` open the database read-only; ``close`` writes one
audited event. A case is named by its id, a unique id prefix, or its folder name. The
case's label on screen follows ``cases.display`` (the folder name by default, or the
opaque id). Imports no torch; the report's rendering lives in :mod:`._case_report`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from marginwatch.engine.errors import ConfigError

from ._audit_cli import parse_when

__all__ = ["STATE_WORDS", "case_close", "case_list", "case_report", "case_show"]

#: how a person reads a state (CLI, dashboard, report).
STATE_WORDS = {
    "tumour": "tumour at margin",
    "not-assessable": "not assessable",
    "pending": "pending",
    "clear": "clear",
    "empty": "no image yet",
}


def _open(db: str | None, config: Path | None, *, readonly: bool) -> tuple[Any, Any]:
    """(the store, the configuration); reading commands open the database read-only."""
    from marginwatch.engine.config import load_config
    from marginwatch.storage import Store

    cfg = load_config(config)
    url = db or cfg.daemon.resolved_db_url()
    store = Store.open(url, readonly=readonly,
                       busy_timeout_seconds=cfg.daemon.db_busy_timeout_seconds)
    return store, cfg


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.isoformat(timespec="seconds")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _case_dict(case: Any, display: str) -> dict[str, Any]:
    from marginwatch.engine.pathnames import display_path

    data = asdict(case)
    data["folder"] = display_path(case.folder) if display == "folder" else None
    data["root_key"] = display_path(case.root_key) if display == "folder" else None
    data["label"] = label_of(case, display)
    data["counts"] = dict(case.counts)
    return data


def label_of(case: Any, display: str) -> str:
    """The case's display label, printable (a folder name may hold any bytes)."""
    from marginwatch.engine.pathnames import display_path

    return display_path(case.folder) if display == "folder" else case.label("id")


def case_list(
    db: str | None, config: Path | None, open_only: bool, since: str | None, as_json: bool,
    out: IO[str] | None = None,
) -> None:
    out = out or sys.stdout
    when = parse_when(since, "--since")
    store, cfg = _open(db, config, readonly=True)
    display = cfg.cases.display
    with store:
        cases = store.list_cases(open_only=open_only, since=when)
        loose = store.images_outside_cases()
    if as_json:
        body = {"note": "research use, not a diagnosis",
                "cases": [_case_dict(c, display) for c in cases],
                "images_outside_cases": loose}
        json.dump(body, out, default=_json_default, indent=2)
        out.write("\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(cases)} case(s) — research use, not a diagnosis")
    for name in ("case id", "label", "state", "status", "images", "tumour", "not assessable",
                 "pending", "clear", "last image"):
        table.add_column(name)
    for c in cases:
        state = c.state + (f" (reopened x{c.reopened})" if c.reopened and c.state == "open"
                           else "" if c.state == "open" else f" ({c.close_reason})")
        table.add_row(c.case_id[:8], label_of(c, display), state, STATE_WORDS[c.status],
                      str(c.images), *(str(c.counts[k]) for k in
                                       ("tumour", "not-assessable", "pending", "clear")),
                      _when(c.last_image_at))
    console = Console(file=out, width=160 if not out.isatty() else None)
    console.print(table)
    if loose:
        console.print(f"{loose} image(s) lie directly in an export folder, in no case folder "
                      "(see `marginwatch audit list`)")


def case_show(
    db: str | None, config: Path | None, case: str, as_json: bool, out: IO[str] | None = None
) -> None:
    from marginwatch.engine.pathnames import display_path

    out = out or sys.stdout
    store, cfg = _open(db, config, readonly=True)
    display = cfg.cases.display
    with store:
        detail = store.case_detail(case)
    c = detail.case
    if as_json:
        body = _case_dict(c, display)
        body["image_count"] = c.images  # "images" is the list here
        body["images"] = [
            {**asdict(i), "rel_path": display_path(i.rel_path) if display == "folder" else None}
            for i in detail.images
        ]
        body["events"] = [asdict(e) for e in detail.events]
        body["note"] = "research use, not a diagnosis"
        json.dump(body, out, default=_json_default, indent=2)
        out.write("\n")
        return
    w = out.write
    w(f"case {c.case_id}  {label_of(c, display)}  (research use, not a diagnosis)\n")
    w(f"  status        {STATE_WORDS[c.status].upper()}  "
      + ", ".join(f"{c.counts[k]} {STATE_WORDS[k]}" for k in c.counts) + "\n")
    closed = "" if c.state == "open" else (
        f" ({c.close_reason} by {c.closed_by} at {_when(c.closed_at)}"
        + (f": {c.close_note}" if c.close_note else "") + ")")
    w(f"  state         {c.state}{closed}"
      + (f"; reopened {c.reopened} time(s) by late images" if c.reopened else "") + "\n")
    w(f"  opened        {_when(c.opened_at)}; last image {_when(c.last_image_at)}\n")
    w("  locations\n")
    for loc in c.locations:
        p = "" if loc.max_probability is None else f", max p {loc.max_probability:.2f}"
        w(f"    {loc.location:<22s} {STATE_WORDS[loc.state]:<16s} {loc.images} image(s){p}\n")
    w("  images\n")
    for i in detail.images:
        p = "" if i.probability is None else f" p {i.probability:.3f} (threshold {i.threshold:.2f})"
        name = display_path(i.rel_path) if display == "folder" else ""
        w(f"    {i.image_id[:8]}  {i.location:<22s} {STATE_WORDS[i.state]:<16s}{p}  {name}\n")
        if i.location_issue:
            w(f"              location: {i.location_issue}\n")
        if i.error_message and i.state == "not-assessable":
            w(f"              not assessed: {i.error_message}\n")
    w("  events\n")
    for e in detail.events:
        w(f"    #{e.seq:<6d}{_when(e.ts)}  {e.action:<14s} by {e.actor}  "
          f"{json.dumps(e.payload, sort_keys=True)}\n")


def case_close(
    db: str | None, config: Path | None, case: str, by: str, note: str | None,
    echo: Any = print,
) -> None:
    if not by.strip():
        raise ConfigError("--by: expected the name of the person closing the case")
    store, cfg = _open(db, config, readonly=False)
    display = cfg.cases.display
    with store:
        closed = store.close_case(case, by.strip(), note)
    echo(f"case {closed.case_id[:8]} ({label_of(closed, display)}) closed by {closed.closed_by} "
         f"at {_when(closed.closed_at)}; status {STATE_WORDS[closed.status]}")


def case_report(
    db: str | None, config: Path | None, case: str, out_dir: Path, echo: Any = print,
    now: datetime | None = None, pdf: bool = False,
) -> list[Path]:
    from ._case_report import write_report

    store, cfg = _open(db, config, readonly=True)
    with store:
        paths = write_report(store, case, out_dir, display=cfg.cases.display,
                             now=now or datetime.now(UTC), vocabulary=cfg.cases.locations,
                             max_pixels=cfg.engine.max_pixels, pdf=pdf)
    for path in paths:
        echo(f"report written to {path}")
    return paths
