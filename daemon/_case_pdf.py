"""``marginwatch case report --pdf``: the case report as a PDF, drawn with matplotlib.

matplotlib (already a dependency) writes PDF itself, no browser involved. The PDF holds
what the HTML report holds, laid out on A4 pages: the research-use banner (and the
synthetic-demo warning), the case and its status per location with the faces'
schematic, then three images per page (thumbnail with Grad-CAM beside its details),
then the acknowledgements and the audit chain's head. The HTML file stays the primary
record; this is the same content for a filing system that wants PDF.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ._case_cli import STATE_WORDS
from ._case_panel import face_rows

__all__ = ["write_pdf"]

A4_INCHES = (8.27, 11.69)
IMAGES_PER_PAGE = 3
_COLOURS = {"tumour": "#c62828", "not-assessable": "#ef6c00", "pending": "#1565c0",
            "clear": "#2e7d32", None: "#bdbdbd", "empty": "#bdbdbd"}
BANNER = ("RESEARCH USE ONLY - not a medical device and not a diagnosis. Outputs of a research "
          "CNN on fluorescence confocal microscopy images; the final histopathology decides.")
DEMO = ("SYNTHETIC DEMO MODEL: trained on synthetic images only; its results mean nothing "
        "clinically.")


def _page(banner: list[str]) -> tuple[Any, float]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=A4_INCHES)
    y = 0.975
    for line in banner:
        fig.text(0.05, y, textwrap.fill(line, 110), fontsize=7.5, weight="bold", va="top",
                 color="#b71c1c", bbox={"facecolor": "#fff3e0", "edgecolor": "#b71c1c"})
        y -= 0.035
    return fig, y - 0.01


def _lines(fig: Any, x: float, y: float, lines: list[str], size: float = 8.0,
           width: int = 95) -> float:
    for line in lines:
        wrapped = textwrap.fill(line, width)
        fig.text(x, y, wrapped, fontsize=size, va="top", family="monospace")
        y -= 0.0145 * size / 8.0 * (wrapped.count("\n") + 1)
    return y


def _schematic(fig: Any, y: float, case: Any, vocabulary: list[str]) -> float:
    from matplotlib.patches import FancyBboxPatch

    by_location = {loc.location: loc for loc in case.locations}
    rows = face_rows(vocabulary, set(by_location))
    height = 0.045 * len(rows)
    ax = fig.add_axes((0.05, y - height, 0.9, height))
    ax.set_xlim(0, 3)
    ax.set_ylim(0, len(rows))
    ax.axis("off")
    for r, row in enumerate(rows):
        for c, name in enumerate(row):
            if name is None:
                continue
            loc = by_location.get(name)
            state = None if loc is None else loc.state
            top = len(rows) - 1 - r
            ax.add_patch(FancyBboxPatch((c + 0.04, top + 0.08), 0.92, 0.84,
                                        boxstyle="round,pad=0.0,rounding_size=0.1",
                                        facecolor=_COLOURS[state], edgecolor="#333"))
            word = STATE_WORDS.get(state or "", "not scanned")
            ax.text(c + 0.5, top + 0.5, f"{name.replace('-', ' ').upper()}\n{word}",
                    ha="center", va="center", fontsize=7, color="white", weight="bold")
    return y - height - 0.02


def write_pdf(path: Path, report: Any) -> Path:
    """Write the PDF of ``report`` (a :class:`~._case_report.ReportData`) to ``path``."""
    from matplotlib.backends.backend_pdf import PdfPages

    c = report.detail.case
    banner = [BANNER] + ([DEMO] if report.demo else [])
    metadata = {"Title": f"marginwatch case report {c.case_id}",
                "Subject": "research use, not a diagnosis", "Creator": "marginwatch"}
    with PdfPages(path, metadata=metadata) as pdf:
        fig, y = _page(banner)
        fig.text(0.05, y, f"Case {report.label}", fontsize=15, weight="bold", va="top")
        y = _lines(fig, 0.05, y - 0.035, report.summary, 8.5)
        y = _schematic(fig, y - 0.01, c, report.vocabulary)
        y = _lines(fig, 0.05, y, [f"{loc.location:<22} {STATE_WORDS[loc.state]:<17} "
                                  f"{loc.images} image(s)"
                                  + ("" if loc.max_probability is None
                                     else f", highest p {loc.max_probability:.3f}")
                                  for loc in c.locations])
        pdf.savefig(fig)
        for start in range(0, len(report.images), IMAGES_PER_PAGE):
            fig, y = _page(banner)
            block = (y - 0.03) / IMAGES_PER_PAGE
            for i, item in enumerate(report.images[start : start + IMAGES_PER_PAGE]):
                top = y - i * block
                if item.png is not None:
                    picture = np.asarray(Image.open(io.BytesIO(item.png)).convert("RGB"))
                    ax = fig.add_axes((0.05, top - block + 0.03, 0.3, block - 0.04))
                    ax.imshow(picture)  # (H, W, 3) uint8
                    ax.set_axis_off()
                _lines(fig, 0.05, top - block + 0.025, [item.note], 6.5, 60)
                _lines(fig, 0.38, top, [f"{k}: {v}" for k, v in item.facts], 7.0, 72)
            pdf.savefig(fig)
        fig, y = _page(banner)
        fig.text(0.05, y, "Acknowledgements", fontsize=12, weight="bold", va="top")
        y = _lines(fig, 0.05, y - 0.03, report.acks or ["No alert of this case was acknowledged."])
        fig.text(0.05, y - 0.01, "Case events and audit chain", fontsize=12, weight="bold",
                 va="top")
        _lines(fig, 0.05, y - 0.04, report.events + [report.chain_line])
        pdf.savefig(fig)
    return path
