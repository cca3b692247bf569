"""The dashboard's case panel: a schematic of the specimen's faces, coloured by state.

::

    caseA · OPEN · TUMOUR AT MARGIN            last scan 12 s ago
    6 images: 1 tumour, 1 not assessable, 1 pending, 3 clear
                      BASE clear
    L ANTEROLAT clear   ANTERIOR —       R ANTEROLAT pending
    L POSTEROLAT TUMOUR POSTERIOR clear  R POSTEROLAT NOT ASSESSABLE
                      APEX clear

The schematic is a map of the faces (not to scale): base on top, apex below, the
patient's left on the left. A configured location outside this map, and
``unspecified`` once it holds an image, get a row of their own. A face with no image
yet is "not scanned" (dim); "not assessable" is amber, never the green of clear.
Reads only the :class:`~marginwatch.storage.CaseDetail` it is given; imports no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from marginwatch.storage import CaseDetail, CaseView

__all__ = [
    "FACE_ROWS",
    "STATE_STYLES",
    "case_panel",
    "case_panel_rows",
    "face_rows",
    "short_names",
]

#: the map of the radical-prostatectomy specimen's faces (None: an empty cell).
FACE_ROWS: tuple[tuple[str | None, str | None, str | None], ...] = (
    (None, "base", None),
    ("left-anterolateral", "anterior", "right-anterolateral"),
    ("left-posterolateral", "posterior", "right-posterolateral"),
    (None, "apex", None),
)
STATE_STYLES = {
    "tumour": ("TUMOUR", "bold white on red3"),
    "not-assessable": ("NOT ASSESSABLE", "bold black on dark_orange"),
    "pending": ("PENDING", "bold white on blue"),
    "clear": ("clear", "bold black on green3"),
    None: ("not scanned", "dim"),
}
NARROW_COLUMNS = 70  # below this the heading takes three lines
_NARROW_WORDS = {"NOT ASSESSABLE": "NOT ASSESS.", "not scanned": "—", "PENDING": "pending"}
_OVERALL = {
    "tumour": ("TUMOUR AT MARGIN", "bold white on red3"),
    "not-assessable": ("NOT ASSESSABLE", "bold black on dark_orange"),
    "pending": ("PENDING", "bold white on blue"),
    "clear": ("ALL CLEAR SO FAR", "bold black on green3"),
    "empty": ("NO IMAGE YET", "dim"),
}


def short_names(abbreviations: Mapping[str, str]) -> dict[str, str]:
    """Canonical location -> its first abbreviation (``left-posterolateral`` -> ``LPL``)."""
    out: dict[str, str] = {}
    for short, name in abbreviations.items():
        out.setdefault(name, short.upper())
    return out


def face_rows(vocabulary: tuple[str, ...] | list[str], seen: set[str]) -> list[list[str | None]]:
    """The map's rows for this vocabulary: FACE_ROWS' known faces, then the others."""
    known = {name for row in FACE_ROWS for name in row if name}
    rows: list[list[str | None]] = []
    if known & set(vocabulary):
        rows = [[n if n in vocabulary else None for n in row] for row in FACE_ROWS]
        rows = [row for row in rows if any(row)]
    others = [n for n in vocabulary if n not in known]
    others += sorted(n for n in seen if n not in vocabulary and n not in others)
    for start in range(0, len(others), 3):
        rows.append(list(others[start : start + 3]) + [None] * (3 - len(others[start:start + 3])))
    return rows


def case_panel_rows(
    case: CaseDetail | None, vocabulary: tuple[str, ...] | list[str], width: int
) -> int:
    """Lines the panel wants inside its border, ``width`` columns wide."""
    if case is None:
        return 1
    seen = {loc.location for loc in case.case.locations}
    heading = 2 if width >= NARROW_COLUMNS else 3
    return heading + len(face_rows(vocabulary, seen)) + (1 if case.case.issues else 0)


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _cell(name: str, state: str | None, p: float | None, width: int, short: str) -> Text:
    word, style = STATE_STYLES[state]
    full = name.replace("-", " ").upper()
    label = full if len(full) + len(word) + 1 <= width else short
    if len(label) + len(word) + 1 > width:
        word = _NARROW_WORDS.get(word, word)
    text = f"{label} {word}"
    if state == "tumour" and p is not None and len(text) + 7 <= width:
        text += f" p {p:.2f}"
    return Text(text[:width].center(width), style=style, no_wrap=True, overflow="crop")


def _heading(c: CaseView, now: datetime, label: str, width: int) -> list[Text]:
    """Label, open/closed, overall status; time since the last scan; counts per state."""
    narrow = width < NARROW_COLUMNS
    head = Text(no_wrap=True, overflow="ellipsis")
    head.append(label, style="bold")
    if c.state == "open":
        head.append(" · REOPENED (late image)" if c.reopened else " · open",
                    style="bold magenta" if c.reopened else "")
    else:
        head.append(f" · closed ({c.close_reason})", style="dim")
    word, style = _OVERALL[c.status]
    head.append(" ")
    head.append(f" {word} ", style=style)
    since = f"last scan {_ago((now - c.last_image_at).total_seconds())}"
    counts = Text(no_wrap=True, overflow="ellipsis")
    counts.append(f"{c.images} image(s): " if not narrow else "")
    names = (("tumour", "tumour"), ("not-assessable", "not assess." if narrow else
                                    "not assessable"), ("pending", "pending"), ("clear", "clear"))
    for i, (key, words) in enumerate(names):
        n = c.counts.get(key, 0)
        counts.append("  " if i else "")
        counts.append(f"{n} {words}", style=STATE_STYLES[key][1] if n and key != "clear" else "")
    if not narrow:
        head.append(f"  {since}", style="dim")
        return [head, counts]
    return [head, Text(f"{since} · {c.images} image(s)", style="dim", no_wrap=True,
                       overflow="ellipsis"), counts]


def case_panel(
    case: CaseDetail | None,
    now: datetime,
    width: int,
    *,
    vocabulary: tuple[str, ...] | list[str],
    label: str,
    abbreviations: Mapping[str, str] | None = None,
) -> RenderableType:
    """The panel's content for a ``CaseDetail`` (or None) in ``width`` columns."""
    if case is None:
        return Text("no case yet: scans exported into <export>/<case>/ appear here", style="dim")
    c = case.case
    shorts = short_names(abbreviations or {})
    parts: list[RenderableType] = [*_heading(c, now, label, width)]
    by_location = {loc.location: loc for loc in c.locations}
    rows = face_rows(vocabulary, set(by_location))
    cell_width = max(6, (width - 2) // 3)
    grid = Table.grid(padding=(0, 1))
    for _ in range(3):
        grid.add_column(width=cell_width, no_wrap=True)
    for row in rows:
        cells: list[RenderableType] = []
        for name in row:
            if name is None:
                cells.append(Text(""))
                continue
            loc = by_location.get(name)
            short = shorts.get(name, name.replace("-", " ").upper()[:cell_width // 2])
            cells.append(_cell(name, None if loc is None else loc.state,
                               None if loc is None else loc.max_probability, cell_width, short))
        grid.add_row(*cells)
    parts.append(grid)
    if c.issues:
        parts.append(Text(f"{c.issues} image(s) with a location problem: "
                          "`marginwatch case show` says why", style="dark_orange",
                          no_wrap=True, overflow="ellipsis"))
    return Group(*parts)
