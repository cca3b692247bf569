"""``marginwatch case report``: one self-contained HTML file for the pathology record.

Everything is inside the file: the CSS, the specimen schematic (inline SVG) and every
picture (PNG as ``data:`` URIs). It loads nothing from a network, and prints on A4 with
one image per block (``@media print``, no block split over two pages).

Contents: the research-use banner (and the synthetic-demo warning when the model is
the demo model); the case's status per location; for every image its thumbnail with the
Grad-CAM overlay, probability, threshold, decision, quality and timing details, model
digest and backend; who acknowledged which alert and when; the case's own audit events;
and the audit chain's head (sequence number and hash) when the report was made.

The source image is read (read-only) from the export folder to draw the thumbnail;
when it cannot be, the Grad-CAM map alone is shown, with why. The case is labelled by
``cases.display`` (folder name, or opaque id; with "id" no file or folder name appears).
With ``--pdf`` the same content is also drawn as a PDF by matplotlib
(:mod:`._case_pdf`). Imports no torch.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from marginwatch.engine.errors import ConfigError, MarginwatchError
from PIL import Image

from ._case_cli import STATE_WORDS
from ._case_panel import face_rows

if TYPE_CHECKING:
    from marginwatch.storage import AuditEventView, AuditReport, CaseDetail, ImageDetail


__all__ = ["THUMBNAIL_PX", "CaseRecords", "ImageData", "ReportData", "gather", "render_report",
           "write_report"]

logger = logging.getLogger(__name__)


class CaseRecords(Protocol):
    """What the report reads from a (read-only) :class:`~marginwatch.storage.Store`."""

    def case_detail(self, case: str) -> CaseDetail: ...
    def image_detail(self, image_id: str) -> ImageDetail: ...
    def verify_audit(self) -> AuditReport: ...
    def audit_events(self) -> list[AuditEventView]: ...


THUMBNAIL_PX = 360
_COLOURS = {"tumour": "#c62828", "not-assessable": "#ef6c00", "pending": "#1565c0",
            "clear": "#2e7d32", None: "#bdbdbd", "empty": "#bdbdbd"}
_CSS = """
body { font: 11pt/1.35 system-ui, sans-serif; margin: 1.5em; color: #111; }
h1 { font-size: 16pt; margin: 0 0 .2em; } h2 { font-size: 13pt; margin: 1.2em 0 .4em; }
.banner { border: 2px solid #b71c1c; background: #fff3e0; padding: .5em .8em;
          font-weight: bold; margin-bottom: 1em; }
.demo { border-color: #f9a825; background: #fffde7; }
table { border-collapse: collapse; margin: .3em 0; }
td, th { border: 1px solid #999; padding: .15em .5em; text-align: left; vertical-align: top; }
.state { color: #fff; font-weight: bold; padding: 0 .4em; border-radius: 3px; }
.image { border: 1px solid #999; padding: .6em; margin: .8em 0; display: flex; gap: 1em;
         break-inside: avoid; page-break-inside: avoid; }
.image img { width: 240px; height: auto; border: 1px solid #ccc; }
.issue { color: #b71c1c; } .mono { font-family: ui-monospace, monospace; font-size: 9pt; }
@media print { body { margin: 0; } .image { break-inside: avoid; } a { color: inherit; }
  @page { size: A4; margin: 15mm; } .state { -webkit-print-color-adjust: exact;
  print-color-adjust: exact; } }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.isoformat(timespec="seconds")


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _state(state: str | None) -> str:
    word = STATE_WORDS.get(state or "", "not scanned")
    return f'<span class="state" style="background:{_COLOURS[state]}">{_e(word)}</span>'


def _thumbnail(detail: Any, max_pixels: int) -> tuple[np.ndarray | None, str]:
    """The source image as (h, w, 3) uint8 at most THUMBNAIL_PX wide, or (None, why)."""
    root = os.path.realpath(detail.root_key)
    path = os.path.realpath(os.path.join(root, detail.row.rel_path))
    if os.path.commonpath([root, path]) != root:
        return None, "the source image lies outside the export folder; not opened"
    if not os.path.isfile(path):
        return None, "the source image is not reachable from here"
    try:
        from marginwatch.engine.card import DeviceProfile
        from marginwatch.engine.profiles import to_rgb
        from marginwatch.engine.reader import open_image

        kind, _, staining = (detail.profile or "grey").partition("/")
        device = DeviceProfile(kind=kind, **({"staining": staining} if staining else {}))
        with open_image(Path(path), max_pixels=max_pixels) as source:
            height, width, _ = source.info.shape
            factor = max(1, math.ceil(max(height, width) / THUMBNAIL_PX))
            small = source.overview(factor)  # (h, w, C) float32, block means
        rgb = to_rgb(small, device)  # (h, w, 3) float in [0, 1]
        return (np.clip(rgb, 0.0, 1.0) * 255.0).round().astype(np.uint8), ""
    except (MarginwatchError, ValueError, OSError) as exc:
        logger.info("image %s: thumbnail unavailable (%s)", detail.row.image_id,
                    type(exc).__name__)
        return None, f"the source image could not be read ({type(exc).__name__})"


def _picture(detail: Any, max_pixels: int) -> tuple[bytes | None, str]:
    """PNG of the thumbnail with the Grad-CAM overlay (or either alone), and a note."""
    from marginwatch.engine.render import decode_heatmap_png, heatmap_overlay_png

    thumb, note = _thumbnail(detail, max_pixels)
    heat = None
    if detail.heatmap_png:
        try:
            heat = decode_heatmap_png(detail.heatmap_png)  # (H, W) in [0, 1]
        except MarginwatchError as exc:
            note = f"{note}; the stored Grad-CAM map is unreadable ({type(exc).__name__})"
    if heat is not None and detail.shape and detail.heatmap_scale:
        # the map may overhang the image (padded edge tiles): keep the image's extent
        rows = max(1, math.ceil(detail.shape[0] / detail.heatmap_scale))
        cols = max(1, math.ceil(detail.shape[1] / detail.heatmap_scale))
        heat = heat[:rows, :cols]
    if heat is not None:
        if thumb is not None:  # drawn at the thumbnail's size, the map resized to it
            big = np.asarray(Image.fromarray((heat * 65535).astype(np.uint16)).resize(
                (thumb.shape[1], thumb.shape[0]), Image.Resampling.BILINEAR), np.float32)
            return heatmap_overlay_png(big / 65535.0, thumb), note or "Grad-CAM over the image"
        return heatmap_overlay_png(heat), f"Grad-CAM only: {note}"
    if thumb is not None:
        buffer = io.BytesIO()
        Image.fromarray(thumb).save(buffer, format="PNG")
        return buffer.getvalue(), "no Grad-CAM: the image has not been assessed"
    return None, note


def _schematic_svg(case: Any, vocabulary: list[str]) -> str:
    by_location = {loc.location: loc for loc in case.locations}
    rows = face_rows(vocabulary, set(by_location))
    cell_w, cell_h = 190, 44
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{3 * cell_w + 20}" '
             f'height="{len(rows) * cell_h + 10}" role="img" '
             'aria-label="schematic of the specimen faces">']
    for r, row in enumerate(rows):
        for col, name in enumerate(row):
            if name is None:
                continue
            loc = by_location.get(name)
            state = None if loc is None else loc.state
            x, y = 10 + col * cell_w, 5 + r * cell_h
            parts.append(
                f'<rect x="{x}" y="{y}" width="{cell_w - 6}" height="{cell_h - 6}" rx="6" '
                f'fill="{_COLOURS[state]}" stroke="#333"/>'
                f'<text x="{x + (cell_w - 6) / 2}" y="{y + 16}" text-anchor="middle" '
                f'font-size="11" font-weight="bold" fill="#fff">'
                f'{_e(name.replace("-", " ").upper())}</text>'
                f'<text x="{x + (cell_w - 6) / 2}" y="{y + 31}" text-anchor="middle" '
                f'font-size="10" fill="#fff">{_e(STATE_WORDS.get(state or "", "not scanned"))}'
                "</text>"
            )
    parts.append("</svg>")
    return "".join(parts)


def _model_is_demo(store: CaseRecords) -> dict[str, bool]:
    """Model digest -> synthetic_demo, from the audit log's model.registered events."""
    return {str(e.payload.get("digest")): bool(e.payload.get("synthetic_demo"))
            for e in store.audit_events() if e.action == "model.registered"}


@dataclass
class ImageData:
    """One image of the report: its picture (PNG), the caption and its facts (plain text)."""

    item: Any  # CaseImage
    detail: Any  # ImageDetail
    png: bytes | None
    note: str
    facts: list[tuple[str, str]]


@dataclass
class ReportData:
    """Everything a report shows, gathered once for the HTML and the PDF."""

    detail: Any  # CaseDetail
    label: str
    display: str
    vocabulary: list[str]
    demo: bool
    now: datetime
    chain: Any  # AuditReport
    images: list[ImageData] = field(default_factory=list)

    @property
    def summary(self) -> list[str]:
        c = self.detail.case
        closed = "" if c.state == "open" else (
            f" - {c.close_reason} by {c.closed_by} at {_when(c.closed_at)}"
            + (f": {c.close_note}" if c.close_note else ""))
        return [f"case id {c.case_id}; {c.state}{closed}"
                + (f"; reopened {c.reopened} time(s) by late images" if c.reopened else ""),
                f"opened {_when(c.opened_at)}, last image {_when(c.last_image_at)}; "
                f"report made {_when(self.now)}",
                f"overall: {STATE_WORDS[c.status]} - {c.images} image(s): "
                + ", ".join(f"{c.counts[k]} {STATE_WORDS[k]}" for k in c.counts)]

    @property
    def acks(self) -> list[str]:
        return [f"alert #{a.id} {a.kind} ({img.item.location}): acknowledged by "
                f"{a.acknowledged_by} at {_when(a.acknowledged_at)}"
                + (f" - {a.ack_note}" if a.ack_note else "")
                for img in self.images for a in img.detail.alerts if a.acknowledged_at]

    @property
    def events(self) -> list[str]:
        return [f"#{e.seq} {_when(e.ts)} {e.action} by {e.actor}" for e in self.detail.events]

    @property
    def chain_line(self) -> str:
        chain = self.chain
        state = "intact" if chain.ok else f"BROKEN at #{chain.first_bad_seq}"
        return (f"At {_when(self.now)} the audit chain held {chain.events} event(s); head "
                f"#{chain.head_seq} {chain.head_hash}; {state}.")


def _facts(item: Any, detail: Any, display: str, scrub: Callable[[str], str]
           ) -> list[tuple[str, str]]:
    """(name, plain text) rows about one image; ``scrub`` takes out the case folder's name."""
    from marginwatch.engine.pathnames import display_path

    r = detail.row
    rows = [("image id", item.image_id)]
    if display == "folder":
        rows.append(("file", display_path(item.rel_path)))
    rows.append(("location", f"{item.location} (from {item.location_source or '-'})"))
    if item.location_issue:
        rows.append(("location problem", item.location_issue))
    rows.append(("state", f"{STATE_WORDS[item.state]} (job {r.state}, attempts {r.attempts})"))
    if r.probability is not None:
        decision = "tumour at margin" if r.decision else "no tumour at margin"
        rows.append(("probability", f"{r.probability:.3f} (raw {detail.raw_probability:.3f}); "
                                    f"threshold {r.threshold:.3f}; decision {decision}"))
        rows.append(("model", f"{detail.model_architecture} {r.model_digest}"))
        rows.append(("backend", f"{r.backend} on {detail.device} ({detail.precision})"))
    if r.error_message:
        rows.append(("not assessed", f"{r.error_class}: {r.error_message}"))
    if detail.shape is not None:
        rows.append(("quality", f"shape {tuple(detail.shape)}, {detail.um_per_px} µm/px "
                                f"({detail.um_per_px_source}), profile {detail.profile}, "
                                f"{len(detail.tiles)} tile(s)"))
    quality = getattr(detail, "quality", None)  # the quality gate's measurements, if recorded
    if quality:
        rows.append(("quality checks", str(quality)))
    if detail.timings:
        rows.append(("timings", ", ".join(f"{k} {v * 1000:.0f} ms"
                                          for k, v in detail.timings.items())))
    rows.append(("first seen", _when(item.first_seen)))
    for alert in detail.alerts:
        ack = (f"acknowledged by {alert.acknowledged_by} at {_when(alert.acknowledged_at)}"
               + (f" ({alert.ack_note})" if alert.ack_note else "")
               if alert.acknowledged_at else "NOT acknowledged")
        rows.append((f"alert #{alert.id}", f"{alert.kind} at {_when(alert.raised_at)}: {ack}"))
    return [(k, scrub(v)) for k, v in rows]


def gather(store: CaseRecords, case_key: str, *, display: str, vocabulary: list[str],
           max_pixels: int, now: datetime) -> ReportData:
    """Read what the report shows (NotFoundError: no such case); pictures drawn once."""
    from marginwatch.engine.pathnames import display_path

    detail = store.case_detail(case_key)
    c = detail.case
    folder = display_path(c.folder)
    label = folder if display == "folder" else c.label("id")

    def scrub(text: str) -> str:  # with display "id": no folder name in messages either
        return text if display == "folder" or not folder else text.replace(folder, label)

    demo = _model_is_demo(store)
    data = ReportData(detail=detail, label=label, display=display, vocabulary=vocabulary,
                      demo=False, now=now, chain=store.verify_audit())
    for item in detail.images:
        image = store.image_detail(item.image_id)
        png, note = _picture(image, max_pixels)
        data.images.append(ImageData(item, image, png, note, _facts(item, image, display, scrub)))
        data.demo = data.demo or demo.get(image.row.model_digest or "", False)
    return data


_ISSUE_ROWS = ("location problem", "not assessed")


def _image_block(img: ImageData) -> str:
    picture = (f'<img alt="image {_e(img.item.image_id[:8])}" src="{_png_uri(img.png)}">'
               if img.png else '<div style="width:240px">no picture</div>')
    cells = []
    for name, text in img.facts:
        value = _e(text)
        if name == "state":
            rest = text.partition(" (")[2]
            value = _state(img.item.state) + (f" ({_e(rest)}" if rest else "")
        elif name in _ISSUE_ROWS or text.endswith("NOT acknowledged"):
            value = f'<span class="issue">{value}</span>'
        elif name in ("image id", "model"):
            value = f'<span class="mono">{value}</span>'
        cells.append(f"<tr><th>{_e(name)}</th><td>{value}</td></tr>")
    return (f'<div class="image"><figure style="margin:0">{picture}<figcaption>'
            f'{_e(img.note)}</figcaption></figure><table>{"".join(cells)}</table></div>')


def render_report(data: ReportData) -> str:
    """The report as one self-contained HTML text."""
    c = data.detail.case
    out = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>marginwatch case report — {_e(data.label)}</title><style>{_CSS}</style>",
           "</head><body>",
           '<div class="banner">RESEARCH USE ONLY — not a medical device and not a diagnosis. '
           "These are outputs of a research CNN on fluorescence confocal microscopy images; "
           "the final histopathology decides.</div>"]
    if data.demo:
        out.append('<div class="banner demo">SYNTHETIC DEMO MODEL: trained on synthetic images '
                   "only; its results mean nothing clinically.</div>")
    summary = data.summary
    out += [f"<h1>Case {_e(data.label)}</h1>",
            f"<p>{_e(summary[0])}<br>{_e(summary[1])}</p>",
            f"<p>Overall: {_state(c.status)} — {c.images} image(s): "
            + ", ".join(f"{c.counts[k]} {STATE_WORDS[k]}" for k in c.counts) + "</p>",
            "<h2>Status per location</h2>", _schematic_svg(c, data.vocabulary),
            "<table><tr><th>location</th><th>status</th><th>images</th>"
            "<th>highest probability</th><th>last scan</th></tr>"]
    for loc in c.locations:
        p = "-" if loc.max_probability is None else f"{loc.max_probability:.3f}"
        out.append(f"<tr><td>{_e(loc.location)}</td><td>{_state(loc.state)}</td>"
                   f"<td>{loc.images}</td><td>{p}</td><td>{_when(loc.last_scan_at)}</td></tr>")
    out.append("</table><h2>Images</h2>")
    out += [_image_block(img) for img in data.images]
    acks = [(a, img.item) for img in data.images for a in img.detail.alerts if a.acknowledged_at]
    out.append("<h2>Acknowledgements</h2>")
    if acks:
        out.append("<table><tr><th>alert</th><th>kind</th><th>location</th><th>by</th>"
                   "<th>at</th><th>note</th></tr>")
        out += [f"<tr><td>#{a.id}</td><td>{_e(a.kind)}</td><td>{_e(item.location)}</td>"
                f"<td>{_e(a.acknowledged_by)}</td><td>{_when(a.acknowledged_at)}</td>"
                f"<td>{_e(a.ack_note)}</td></tr>" for a, item in acks]
        out.append("</table>")
    else:
        out.append("<p>No alert of this case has been acknowledged.</p>")
    out.append("<h2>Case events (audit log)</h2><table><tr><th>#</th><th>time</th>"
               "<th>event</th><th>by</th></tr>")
    out += [f"<tr><td>{e.seq}</td><td>{_when(e.ts)}</td><td>{_e(e.action)}</td>"
            f"<td>{_e(e.actor)}</td></tr>" for e in data.detail.events]
    chain = data.chain
    out += ["</table><h2>Audit chain</h2>",
            f"<p>At {_when(data.now)} the audit chain held {chain.events} event(s); head "
            f'#{chain.head_seq} <span class="mono">{_e(chain.head_hash)}</span>; '
            f"{'intact' if chain.ok else 'BROKEN at #' + str(chain.first_bad_seq)}. "
            "Keep this head: `marginwatch audit verify` checks the chain still holds it.</p>",
            "</body></html>"]
    return "\n".join(out)


def _write(path: Path, write: Callable[[Path], object], where: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    try:
        write(partial)
        partial.replace(path)  # never a half-written report under the final name
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ConfigError(f"{where}: cannot write the report ({exc.strerror})") from exc


def write_report(store: CaseRecords, case_key: str, out_dir: Path, *, display: str, now: datetime,
                 vocabulary: list[str] | None = None, max_pixels: int = 30_000 * 30_000,
                 pdf: bool = False) -> list[Path]:
    """Write ``marginwatch-case-<id8>.html`` (and ``.pdf``) into ``out_dir``; the paths."""
    from marginwatch.engine.config import DEFAULT_LOCATIONS

    data = gather(store, case_key, display=display,
                  vocabulary=list(vocabulary or DEFAULT_LOCATIONS), max_pixels=max_pixels, now=now)
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{out_dir}: cannot create the report folder ({exc.strerror})") from exc
    html_path = out_dir / f"marginwatch-case-{data.detail.case.case_id[:8]}.html"
    text = render_report(data)
    _write(html_path, lambda p: p.write_text(text, encoding="utf-8"), out_dir)
    paths = [html_path]
    if pdf:
        from ._case_pdf import write_pdf

        pdf_path = html_path.with_suffix(".pdf")
        _write(pdf_path, lambda p: write_pdf(p, data), out_dir)
        paths.append(pdf_path)
    return paths
