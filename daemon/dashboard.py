"""``marginwatch dashboard``: the theatre console, a separate read-only process.

    header   daemon state (heartbeat), model + digest, backend/device, demo banner
    alerts   unacknowledged, naming their location: tumour at margin (red), not
             assessed (amber), newest first
    picture  the latest alert's Grad-CAM (half blocks) beside its driving region
    case     the current case: its specimen faces coloured by state (_case_panel.py)
    recent   time, case/image, probability, decision, latency
    footer   today's counters, queue depth, throughput, median latency

:class:`Source` (:mod:`._dashboard_source`) reads a :class:`Snapshot` from the database
opened read-only (it keeps trying while the file does not exist yet and says so);
:func:`render` turns a snapshot into a rich renderable for a given size;
:func:`run_dashboard` drives ``rich.live.Live`` full screen, or prints one frame
(``--once``). The console is access controlled, so it
shows case and image names (with ``cases.display = "id"`` the case folder's name is
left out); logs never do. Imports no torch.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from marginwatch.engine.pathnames import display_path
from rich import box
from rich.console import Console, Group, RenderableType
from rich.layout import Layout
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ._case_panel import case_panel, case_panel_rows
from ._dashboard_source import MAX_ALERT_ROWS, Snapshot, Source, latency_seconds
from .locations import location_label

__all__ = ["Snapshot", "Source", "live_loop", "render", "run_dashboard"]

logger = logging.getLogger(__name__)

RED = "bold white on red3"
AMBER = "bold black on dark_orange"
RESEARCH = "research use, not a diagnosis"
NEW_VERSION = " \u21bb new version"  # beside an image that replaced an earlier version
MIN_FRAME_SECONDS = 0.02  # after a change: at most ~50 frames/s during a burst of commits
# --- rendering ----------------------------------------------------------------------------


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _clock_time(when: datetime, now: datetime) -> str:
    local = when.astimezone()
    if local.date() == now.astimezone().date():
        return local.strftime("%H:%M:%S")
    return local.strftime("%d %b %H:%M")


def _label(rel_path: str, width: int, display: str = "folder") -> str:
    """``case/image`` shortened from the left (the image name is the part people act on).

    ``display`` "id" (``cases.display``) leaves the case folder's name out.
    """
    if display == "id":
        rel_path = rel_path.partition("/")[2] or rel_path
    rel_path = display_path(rel_path)  # any bytes, newlines, escapes: one printable line
    if len(rel_path) <= width:
        return rel_path
    return "\u2026" + rel_path[-(width - 1):]


def _daemon_state(shot: Snapshot) -> Text:
    beat = shot.heartbeat
    if shot.db_problem is not None:
        return Text("daemon: unknown (no database)", style="bold yellow")
    if beat is None:
        return Text("daemon: never seen", style="bold yellow")
    age = beat.age_seconds(shot.now)
    since = _clock_time(beat.beat_at, shot.now)
    if beat.status == "running" and age <= shot.stale_after_seconds:
        up = _ago((shot.now - beat.started_at).total_seconds())
        return Text(f"\u25cf daemon running (up {up})", style="bold green")
    if beat.status == "running":
        return Text(f"\u25cf daemon NOT RESPONDING since {since} ({_ago(age)} ago)",
                    style=RED)
    return Text(f"\u25cf daemon {beat.status.upper()} since {since} ({_ago(age)} ago)",
                style=RED)


def _problem_line(shot: Snapshot) -> str:
    """The reason first (the path may be long): `` DATABASE NOT READABLE: why (where)``."""
    problem = str(shot.db_problem)
    location = shot.db_location.removeprefix("sqlite:///")
    if problem.startswith(location + ": "):
        problem = f"{problem[len(location) + 2:]} ({location})"
    return f" DATABASE NOT READABLE: {problem}"


def _header(shot: Snapshot, width: int) -> RenderableType:
    top = Text()
    top.append(" MARGINWATCH ", style="bold white on blue")
    top.append(" ")
    top.append_text(_daemon_state(shot))
    d = shot.daemon
    if d:
        top.append(f"  {d.get('architecture', '?')} {str(d.get('model_digest', ''))[:8]}",
                   style="cyan")
        device = str(d.get("device", ""))
        if width < 100:
            device = device[:16]
        top.append(f"  {d.get('backend', '?')}/{device}", style="cyan")
    clock = shot.now.astimezone().strftime("%H:%M:%S")
    if top.cell_len + 1 + len(clock) <= width:
        top.append(" " * (width - top.cell_len - len(clock)) + clock)
    top.truncate(width, overflow="ellipsis")
    lines: list[RenderableType] = [top]
    if d.get("synthetic_demo"):
        detail = (": trained on synthetic images only, its results mean nothing clinically"
                  if width >= 120 else " (synthetic data only)")
        banner = Text(f" \u26a0 SYNTHETIC DEMO MODEL{detail} \u2014 {RESEARCH} ",
                      style="bold black on yellow")
        banner.truncate(width, overflow="ellipsis")
        lines.append(banner)
    else:
        lines.append(Text(f" Outputs are for {RESEARCH}.", style="dim"))
    if shot.db_problem is not None:
        lines.append(Text(_problem_line(shot), style=AMBER, overflow="fold"))
    if shot.alarms:
        lines.append(_alarm_line(shot, width))
    return Group(*lines)


def _alarm_line(shot: Snapshot, width: int) -> Text:
    """Open monitoring alarms (until `marginwatch monitor ack`): newest first, one line."""
    newest = shot.alarms[0]
    more = f" (+{len(shot.alarms) - 1} more)" if len(shot.alarms) > 1 else ""
    line = Text(f" MONITOR ALARM #{newest.id} {newest.kind}{more} (marginwatch monitor ack "
                f"{newest.id} --by NAME): {newest.message} ", style=AMBER)
    line.truncate(width, overflow="ellipsis")
    return line


def _alert_rows(shot: Snapshot, width: int, rows: int) -> RenderableType:
    if shot.db_problem is not None:
        return Text("no alerts can be shown until the database is readable", style="yellow")
    if not shot.alerts:
        return Text("no open alerts", style="green")
    table = Table.grid(padding=(0, 1), expand=True)
    wide = width >= 120
    table.add_column(no_wrap=True)  # id
    table.add_column(no_wrap=True)  # time
    table.add_column(no_wrap=True)  # kind
    table.add_column(no_wrap=True, ratio=1, overflow="ellipsis")  # case/image
    table.add_column(no_wrap=True, justify="right")  # probability
    table.add_column(no_wrap=True)  # region
    table.add_column(no_wrap=True, justify="right")  # age
    label_width = max(12, width - (86 if wide else 46))
    shown = shot.alerts[: max(1, rows - (1 if len(shot.alerts) > rows else 0))]
    for alert in shown:
        tumour = alert.kind == "tumour-at-margin"
        style = RED if tumour else AMBER
        box_ = shot.regions.get(alert.id)
        region = "" if box_ is None or not wide else (
            f"({box_[0]},{box_[1]})-({box_[2]},{box_[3]})")  # at 80 columns: room for names
        what = ("TUMOUR AT MARGIN" if wide else "TUMOUR") if tumour else "NOT ASSESSED"
        table.add_row(
            f"#{alert.id}",
            _clock_time(alert.raised_at, shot.now),
            f"{location_label(alert.location)} \u2014 {what}",
            _label(alert.rel_path, label_width, _display(shot))
            + ("" if tumour else _why(alert.message)),
            "" if alert.probability is None else f"p {alert.probability:.2f}",
            region,
            _ago((shot.now - alert.raised_at).total_seconds()),
            style=style,
        )
    more = len(shot.alerts) - len(shown)
    if more > 0:
        return Group(table, Text(f"+{more} more open alert(s)", style="bold red"))
    return table


def _why(message: str) -> str:
    """`` | out of focus: focus 2.7 < 300`` from a not-assessed alert's message, else ''."""
    marker = "not assessable: "
    if marker not in message:
        return ""
    return " | " + message.split(marker, 1)[1].split(";", 1)[0].strip()


def _picture_panel(shot: Snapshot, width: int, rows: int) -> RenderableType:
    pic = shot.picture
    alert = shot.picture_alert
    if pic is None or alert is None:
        return Text("Grad-CAM of the newest tumour alert appears here.", style="dim")
    head = Text(f"#{alert.id} {location_label(alert.location)} "
                f"{_label(alert.rel_path, max(10, width - 34), _display(shot))}", style="bold")
    if alert.probability is not None:
        head.append(f" p={alert.probability:.2f}", style="bold red")
    if pic.heatmap_rgb is None:
        message = Text(alert.message, style="dark_orange")
        return Group(head, message)
    alone = pic.region_rgb is None  # the heatmap alone gets the width, the note a line
    foot = [Text(pic.quality, style="dim")] if pic.quality else []
    rows = max(3, rows - (4 if alone else 2) - len(foot))
    cols = max(6, min(2 * rows, width if alone else (width - 1) // 2))
    rows = min(rows, max(3, (cols + 1) // 2))  # the maps are square: 2 pixels per cell row
    if pic.region_rgb is not None:
        return Group(head, pic.blocks(cols, rows),
                     Text("Grad-CAM, box = region | region", style="dim"), *foot)
    # no thumbnail: the heatmap alone, and why
    return Group(head, pic.blocks(cols, rows), Text("Grad-CAM, box = region", style="dim"),
                 Text(pic.region_note, style="yellow"), *foot)


def _decision(row: Any) -> Text:
    if row.state == "failed":
        return Text("NOT ASSESSED", style="bold dark_orange")
    if row.state in ("pending", "processing"):
        return Text(row.state, style="dim")
    if row.state == "duplicate":
        return Text("duplicate", style="dim")
    if row.state in ("superseded", "moved"):  # not read here; the newer/new name is shown
        return Text(row.state, style="dim")
    if row.decision:
        return Text("TUMOUR", style="bold red")
    return Text("clear", style="green")


def _recent(shot: Snapshot, width: int, rows: int) -> RenderableType:
    if not shot.recent:
        text = "waiting for the database" if shot.db_problem else "no images yet"
        return Text(text, style="dim")
    table = Table(box=None, padding=(0, 1), collapse_padding=True, pad_edge=False,
                  expand=True, show_edge=False, header_style="bold")
    seconds = width >= 56
    table.add_column("time", no_wrap=True, width=8 if seconds else 5)
    table.add_column("case/image", no_wrap=True, ratio=1, overflow="ellipsis")
    table.add_column("p", no_wrap=True, justify="right", width=4)
    table.add_column("result", no_wrap=True, width=12)
    table.add_column("latency" if width >= 70 else "lat", no_wrap=True, justify="right",
                     width=7 if width >= 70 else 5)
    label_width = max(10, width - (33 if seconds else 30))
    for row in shot.recent[: max(1, rows - 1)]:
        when = row.finished_at or row.first_seen
        latency = latency_seconds(row)
        stamp = _clock_time(when, shot.now)
        mark = NEW_VERSION if row.previous_image_id else ""  # a changed file, linked
        table.add_row(
            stamp if seconds else stamp[:5],
            _label(row.rel_path, max(6, label_width - len(mark)), _display(shot)) + mark,
            "" if row.probability is None else f"{row.probability:.2f}",
            _decision(row),
            "" if latency is None else f"{latency:.1f}s",
        )
    return table


def _display(shot: Snapshot) -> str:
    return shot.cases.display


def _case_label(shot: Snapshot) -> str:
    if shot.case is None:
        return ""
    c = shot.case.case
    return display_path(c.folder) if _display(shot) == "folder" else c.label("id")


def _case(shot: Snapshot, width: int) -> RenderableType:
    cfg = shot.cases
    return case_panel(shot.case, shot.now, width, vocabulary=cfg.locations,
                      label=_case_label(shot), abbreviations=cfg.abbreviations)


def _footer(shot: Snapshot, width: int) -> Text:
    text = Text(" today ", style="bold reverse")
    c = shot.counters
    if c is None:
        text.append(" no counts yet", style="dim")
        return text
    text.append(f" assessed {c.assessed}  ")
    text.append(f"positive {c.positive}", style="bold red" if c.positive else "")
    text.append("  ")
    text.append(f"failed {c.failed}", style="bold dark_orange" if c.failed else "")
    text.append(f"  queue {shot.queue_depth}  ")
    if shot.per_minute is not None:
        text.append(f"{shot.per_minute:.1f}/min  ")
    if shot.median_latency_seconds is not None:
        text.append(f"median {shot.median_latency_seconds:.1f}s")
    text.truncate(width, overflow="ellipsis")
    return text


def render(shot: Snapshot, width: int, height: int) -> Layout:
    """The whole frame for a ``width`` x ``height`` terminal (readable from 80x24)."""
    header = _header(shot, width)
    header_rows = 3 if shot.alarms else 2
    if shot.db_problem:  # the whole message, wrapped: it names the file and what to do
        header_rows += min(3, 1 + -(-len(_problem_line(shot)) // width))
    body_rows = max(8, height - header_rows - 1)
    want_alerts = max(1, len(shot.alerts))
    alert_rows = min(want_alerts, max(3, body_rows // 3)) if shot.alerts else 1
    alert_rows = min(alert_rows, 6 if height < 30 else MAX_ALERT_ROWS)
    lower_rows = max(5, body_rows - alert_rows - 2)
    red = any(a.kind == "tumour-at-margin" for a in shot.alerts)
    alert_title = f"OPEN ALERTS ({len(shot.alerts)})" if shot.alerts else "alerts"
    alert_border = "red" if red else ("dark_orange" if shot.alerts else "green")
    pad = (0, 1) if width >= 100 else (0, 0)
    edge = 4 if width >= 100 else 2
    share = (width - 4) // 2 if height >= 40 else (width - 4) * 3 // 8
    picture_width = min(max(25, share), 4 * (lower_rows - 4) + 1 + edge)
    shown = shot.picture_alert
    tumour_picture = shown is not None and shown.kind == "tumour-at-margin"
    picture_title = "newest tumour alert" if tumour_picture else "newest alert"
    layout = Layout()
    layout.split_column(
        Layout(header, name="header", size=header_rows),
        Layout(Panel(_alert_rows(shot, width - 4, alert_rows), title=alert_title,
                     title_align="left", border_style=alert_border, box=box.ROUNDED,
                     padding=(0, 1)), name="alerts", size=alert_rows + 2),
        Layout(name="lower", size=lower_rows),
        Layout(_footer(shot, width), name="footer", size=1),
    )
    layout["lower"].split_row(
        Layout(Panel(_picture_panel(shot, picture_width - edge, lower_rows - 2),
                     title=picture_title, title_align="left", box=box.ROUNDED,
                     padding=pad), name="picture", size=picture_width),
        Layout(name="right"),
    )
    right_width = width - picture_width
    case_rows = min(case_panel_rows(shot.case, shot.cases.locations, right_width - 4) + 2,
                    lower_rows - 4)
    case_border = {"tumour": "red", "not-assessable": "dark_orange"}.get(
        shot.case.case.status if shot.case is not None else "", "blue")
    layout["right"].split_column(
        Layout(Panel(_case(shot, right_width - 4), title="case (schematic of the specimen)",
                     title_align="left", border_style=case_border, box=box.ROUNDED,
                     padding=(0, 1)), name="case", size=case_rows),
        Layout(Panel(_recent(shot, right_width - edge, lower_rows - case_rows - 2),
                     title="recent results", title_align="left", box=box.ROUNDED,
                     padding=pad), name="recent"),
    )
    return layout


# --- the process ------------------------------------------------------------------------


class Bell:
    """Rings once for each alert id not seen before (not for those open at start-up)."""

    def __init__(self) -> None:
        self._seen: set[int] | None = None

    def new_alerts(self, shot: Snapshot) -> int:
        if shot.db_problem is not None:
            return 0
        ids = {a.id for a in shot.alerts}
        if self._seen is None:
            self._seen = ids
            return 0
        fresh = ids - self._seen
        self._seen |= ids
        return len(fresh)


def run_dashboard(
    *,
    db: str | None = None,
    config_path: Path | None = None,
    once: bool = False,
    width: int | None = None,
    height: int | None = None,
    console: Console | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> int:
    """``marginwatch dashboard``: full-screen live console, or one frame with ``once``."""
    from marginwatch.engine.config import load_config

    config = load_config(config_path)
    db_url = db or config.daemon.resolved_db_url()
    stale = max(10.0, 3 * config.daemon.heartbeat_seconds + 2.0)
    with Source(db_url, recent_rows=config.dashboard.recent_rows, stale_after_seconds=stale,
                max_pixels=config.engine.max_pixels, cases=config.cases) as source:
        if once:
            out = console or Console(width=width, height=height)
            w, h = width or out.size.width, height or out.size.height
            out.print(render(source.snapshot(), w, h), height=h)
            return 0
        return _live(source, config, console or Console(width=width, height=height), stop)


def _live(source: Source, config: Any, console: Console, stop: Callable[[], bool]) -> int:
    """Full screen until Ctrl-C, SIGTERM (systemd stopping the console) or ``stop()``."""
    import signal
    import threading

    from rich.live import Live

    terminated = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: terminated.set())
    try:
        return live_loop(source, config, console, lambda: terminated.is_set() or stop(), Live)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _lower_priority(nice: int) -> None:
    """Lower this thread's CPU priority by ``nice`` (``dashboard.nice``).

    On Linux the nice value is per thread, and threads started afterwards (the change
    waker's) inherit it: the console, or the benchmark's probe thread, and nothing else.
    """
    if nice > 0 and hasattr(os, "nice"):
        try:
            os.nice(nice)
        except OSError as exc:  # lowering is always allowed; a sandbox may still refuse
            logger.info("the dashboard's CPU priority was not lowered (%s)", exc.strerror)


def live_loop(source: Source, config: Any, console: Console, stop: Callable[[], bool],
              live_class: Any) -> int:
    """Frames from ``source`` into ``live_class`` (``rich.live.Live``, or the dashboard
    benchmark's recorder) until ``stop()``: on each change the waker reports, else at
    ``refresh_per_second``; at the CPU priority lowered by ``dashboard.nice``."""
    _lower_priority(config.dashboard.nice)
    bell = Bell()
    period = 1.0 / config.dashboard.refresh_per_second

    def frame() -> RenderableType:
        shot = source.snapshot()
        if bell.new_alerts(shot) and config.dashboard.bell:
            console.bell()
        return render(shot, console.size.width, console.size.height)

    from ._db_waker import open_waker

    # A commit wakes the loop (inotify on SQLite + WAL, LISTEN on PostgreSQL); without
    # one it redraws every ``period`` (the fallback, and for clocks and "ago" texts).
    with open_waker(source.db_url) as waker, live_class(
            frame(), console=console, screen=True, auto_refresh=False, transient=True,
            redirect_stdout=False, redirect_stderr=False) as live:
        while not stop():
            if waker.wait(period):
                time.sleep(MIN_FRAME_SECONDS)  # let the rest of a burst of writes land
            live.update(frame(), refresh=True)
    return 0

