"""Small colour pictures for the theatre console: Grad-CAM and the region that drove it.

A terminal cell shows two pixels stacked: the upper half block ``▀`` drawn in the
upper pixel's colour (foreground) on the lower pixel's colour (background). So an
``(2 * rows, cols, 3)`` RGB array becomes ``rows`` lines of ``cols`` characters.

Imports no torch: the heatmap comes from the stored 16-bit PNG
(:mod:`marginwatch.engine.render`), the region thumbnail from the engine's reader
and device profiles, which are numpy/tifffile/Pillow only.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.segment import Segment
from rich.style import Style

from ._quality_text import quality_summary

__all__ = ["HalfBlocks", "Picture", "half_blocks", "load_picture"]

logger = logging.getLogger(__name__)

UPPER_HALF = "\u2580"  # ▀
BOX_RGB = (255, 255, 255)


@dataclass(frozen=True)
class Picture:
    """What the console draws for one alert.

    ``heatmap_rgb``: the whole image's Grad-CAM, coloured, (H, W, 3) uint8, with the
    driving region outlined; ``region_rgb``: the source pixels of that region, (H, W, 3)
    uint8, or None with ``region_note`` saying why it is not shown.
    """

    alert_id: int
    heatmap_rgb: np.ndarray | None
    region_rgb: np.ndarray | None
    region_note: str
    box: tuple[int, int, int, int] | None
    quality: str | None = None  # the gate's one-line summary (daemon._quality_text)
    _drawn: dict[tuple[int, int], HalfBlocks] = field(
        default_factory=dict, compare=False, repr=False)

    def blocks(self, cols: int, rows: int) -> HalfBlocks:
        """The heatmap, and beside it the region when there is one, ``cols`` cells each.

        Drawn once per size: the console redraws on every commit, and the picture changes
        only with the alert (drawing it was about half of a frame's time).
        """
        key = (cols, rows)
        if key not in self._drawn:
            if self.heatmap_rgb is None:
                raise ValueError(f"alert {self.alert_id}: no heatmap to draw")
            drawn = half_blocks(self.heatmap_rgb, cols, rows)
            if self.region_rgb is not None:
                drawn = drawn.beside(half_blocks(self.region_rgb, cols, rows))
            self._drawn[key] = drawn
        return self._drawn[key]


class HalfBlocks:
    """A picture as lines of styled segments, ready to draw (a rich renderable).

    Runs of cells with the same colours are one segment, and nothing is measured again
    when the frame is redrawn.
    """

    def __init__(self, lines: list[list[Segment]], width: int) -> None:
        self.lines = lines
        self.width = width

    def beside(self, other: HalfBlocks, gap: int = 1) -> HalfBlocks:
        """This picture, ``gap`` spaces, then ``other`` (lines paired from the top)."""
        blank = [Segment(" " * self.width)]
        lines = [
            [*(self.lines[i] if i < len(self.lines) else blank), Segment(" " * gap),
             *(other.lines[i] if i < len(other.lines) else [])]
            for i in range(max(len(self.lines), len(other.lines)))
        ]
        return HalfBlocks(lines, self.width + gap + other.width)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for line in self.lines:
            yield from Segment.adjust_line_length(line, options.max_width) if (
                self.width > options.max_width) else line
            yield Segment.line()

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(min(self.width, options.max_width), min(self.width, options.max_width))


def _resize(rgb: np.ndarray, cols: int, rows: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (2 * rows, cols, 3) uint8 (two pixels per character cell)."""
    image = Image.fromarray(rgb).resize((max(1, cols), max(2, 2 * rows)), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def half_blocks(rgb: np.ndarray, cols: int, rows: int) -> HalfBlocks:
    """Render an (H, W, 3) uint8 picture in ``cols`` x ``rows`` character cells."""
    pixels = _resize(rgb, cols, rows)
    styles: dict[tuple[int, ...], Style] = {}
    lines = []
    for row in range(pixels.shape[0] // 2):
        cells = np.concatenate([pixels[2 * row], pixels[2 * row + 1]], axis=1).tolist()
        line: list[Segment] = []
        run, key = 0, None
        for x, cell in enumerate(cells + [None]):
            here = None if cell is None else tuple(cell)
            if x and here != key:  # a run of equal cells ends: one segment
                style = styles.get(key)
                if style is None:
                    style = styles[key] = Style.parse(
                        f"rgb({key[0]},{key[1]},{key[2]}) on rgb({key[3]},{key[4]},{key[5]})")
                line.append(Segment(UPPER_HALF * run, style))
                run = 0
            key, run = here, run + 1
        lines.append(line)
    return HalfBlocks(lines, pixels.shape[1])


def _heatmap_rgb(
    png: bytes, scale: float | None, box: tuple[int, int, int, int] | None
) -> np.ndarray:
    from marginwatch.engine.render import colourise, decode_heatmap_png

    heat = decode_heatmap_png(png)  # (H, W) in [0, 1]
    rgb = (colourise(heat) * 255.0).round().astype(np.uint8)  # (H, W, 3)
    if box is not None and scale:
        h, w = heat.shape
        x0, y0, x1, y1 = (int(round(v / scale)) for v in box)
        x0, x1 = max(0, min(w - 1, x0)), max(0, min(w - 1, x1 - 1))
        y0, y1 = max(0, min(h - 1, y0)), max(0, min(h - 1, y1 - 1))
        thick = max(1, min(h, w) // 48)
        rgb[y0 : y0 + thick, x0 : x1 + 1] = BOX_RGB
        rgb[max(y0, y1 - thick + 1) : y1 + 1, x0 : x1 + 1] = BOX_RGB
        rgb[y0 : y1 + 1, x0 : x0 + thick] = BOX_RGB
        rgb[y0 : y1 + 1, max(x0, x1 - thick + 1) : x1 + 1] = BOX_RGB
    return rgb


def _region_rgb(
    root: str, rel_path: str, box: tuple[int, int, int, int], profile: str | None, max_pixels: int
) -> tuple[np.ndarray | None, str]:
    """The source pixels of ``box`` as RGB, or (None, why not)."""
    from marginwatch.engine.errors import MarginwatchError

    root_real = os.path.realpath(root)
    path = os.path.realpath(os.path.join(root_real, rel_path))
    if os.path.commonpath([root_real, path]) != root_real:
        return None, "source image is outside the watched folder; not opened"
    if not os.path.isfile(path):
        return None, "source image not reachable from this terminal"
    try:
        from marginwatch.engine.card import DeviceProfile
        from marginwatch.engine.profiles import to_rgb
        from marginwatch.engine.reader import open_image

        kind, _, staining = (profile or "grey").partition("/")
        device = DeviceProfile(kind=kind, **({"staining": staining} if staining else {}))
        x0, y0, x1, y1 = box
        with open_image(Path(path), max_pixels=max_pixels) as source:
            pixels = source.read_region(y0, x0, y1, x1)  # (h, w, C) in the file's dtype
        rgb = to_rgb(pixels, device)  # (h, w, 3) float in [0, 1]
        return (np.clip(rgb, 0.0, 1.0) * 255.0).round().astype(np.uint8), ""
    except (MarginwatchError, ValueError, OSError) as exc:
        logger.info("region thumbnail unavailable (%s)", type(exc).__name__)
        return None, f"source image could not be read ({type(exc).__name__})"


def load_picture(store: Any, alert: Any, *, max_pixels: int) -> Picture:
    """The picture of a tumour-at-margin alert (an ``AlertView``), from a read-only store."""
    image = store.image_detail(alert.image_id)
    box = None
    if image.driving_tile is not None and 0 <= image.driving_tile < len(image.tiles):
        box = tuple(image.tiles[image.driving_tile].box)
    heatmap = None
    if image.heatmap_png:
        try:
            heatmap = _heatmap_rgb(image.heatmap_png, image.heatmap_scale, box)
        except Exception as exc:  # noqa: BLE001 - a bad stored PNG must not stop the console
            logger.warning("alert %d: heatmap not drawable (%s)", alert.id, type(exc).__name__)
    region, note = None, "no region: the image was not assessed"
    if box is not None:
        region, note = _region_rgb(image.root_key, image.row.rel_path, box, image.profile,
                                   max_pixels)
    quality = quality_summary(image.quality)
    return Picture(alert.id, heatmap, region, note, box,
                   None if quality is None else f"quality {quality}")
