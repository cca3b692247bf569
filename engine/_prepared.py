"""The prepared image between ``prepare`` and ``finish``: tiles on demand, tile quality.

Split out of :mod:`engine.assessment`, which plans the image (``prepare``), decides
(``finish``) and re-exports :class:`PreparedImage` (import it from there). Here:

- :class:`PreparedImage`: the planned tiles, with the still-open file they are read from
  in bounded chunks (``iter_tiles``), and the quality-gate bookkeeping (engine.quality):
  image-level values, per-tile values, the focus of each chunk measured as it is read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from ._tile_reader import TileReader
from .card import DeviceProfile, Normalisation
from .errors import InputError
from .normalisation import normalise_tiles
from .profiles import to_rgb
from .quality import FOCUS_DOWNSAMPLE, measure_overview, tile_focus, tile_masks
from .tiling import Box

__all__ = ["OverviewMeasure", "PreparedImage", "Preview"]


class Preview:
    """The overview in the model's colours, (h, w, 3) uint8, drawn when first asked for.

    Only ``predict --cam``, evaluation reports and the tools show it: the daemon does
    not, and drawing it was about 12 ms of every image's preprocessing.
    """

    def __init__(self, overview: np.ndarray, profile: DeviceProfile, high: np.ndarray) -> None:
        self._overview: np.ndarray | None = overview
        self._profile = profile
        self._high = high
        self._rgb: np.ndarray | None = None

    def rgb(self) -> np.ndarray:
        if self._rgb is None:
            assert self._overview is not None
            drawn = to_rgb(self._overview, self._profile, high=self._high)
            self._rgb = (drawn * 255).round().astype(np.uint8)
            self._overview = None  # drawn once; the raw overview is no longer needed
        return self._rgb


class OverviewMeasure:
    """The gate's image-level measurements of one overview, taken once, on first use."""

    def __init__(self, absolute: np.ndarray, scaled: np.ndarray, mask: np.ndarray,
                 um_per_overview_px: float) -> None:
        self._inputs: tuple[np.ndarray, np.ndarray, np.ndarray, float] | None = (
            absolute, scaled, mask, um_per_overview_px)
        self._values: dict[str, float | None] | None = None
        self._lock = threading.Lock()

    def values(self, timings: dict[str, float]) -> dict[str, float | None]:
        """The measurements; the first call takes them and adds its time to ``timings``."""
        with self._lock:
            if self._values is None:
                assert self._inputs is not None
                started = time.perf_counter()
                self._values = measure_overview(*self._inputs)
                self._inputs = None  # the arrays are not needed any more
                timings["quality"] = timings.get("quality", 0.0) + (
                    time.perf_counter() - started)
            return self._values


@dataclass(eq=False)
class PreparedImage:
    """An image read, checked and planned; its tiles are read on demand.

    ``iter_tiles(chunk)`` yields the tiles in plan order as ``(n, 3, S, S)`` uint8 RGB
    chunks of at most ``chunk`` tiles, reading their regions from the still-open file,
    and closes the file after the last one (one pass). ``tiles`` materialises them all
    at once, normalised float32 ``(T, 3, S, S)`` as the network takes them: meant for
    small images (tests, tools); a large mosaic should be streamed. Use as a context
    manager (or call ``close()``) when the tiles may not all be read.
    """

    path: str
    boxes: list[Box]
    footprints: list[Box]  # the boxes before clipping: what each (padded) tile covers
    tissue_fractions: list[float]
    sha256: str
    shape: tuple[int, int, int]  # (H, W, C) of the level read
    dtype: str
    um_per_px: float
    um_per_px_source: str  # "tiff-resolution" | "ome" | "config" | "profile-default"
    profile: str
    tile_px: int  # tile side in source pixels
    heatmap_scale: int  # source pixels per heatmap / preview pixel
    preview: Preview  # the overview as digital H&E, drawn when asked for (preview_rgb)
    tile_size: int = 0  # S: the model's input side in pixels
    normalisation: Normalisation = field(default_factory=Normalisation)
    level: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    # quality gate (engine.quality): the overview arrays for the image-level values
    # (measured on first use: measure_quality), per-tile values (focus is filled in as
    # the tiles are read), and the overview tissue mask for the tiles
    overview_measure: OverviewMeasure | None = field(default=None, repr=False)
    quality_tiles: list[dict[str, float | None]] = field(default_factory=list)
    mask: np.ndarray | None = field(default=None, repr=False)
    _reader: TileReader | None = field(default=None, repr=False)
    _rgb: torch.Tensor | None = field(default=None, repr=False)  # all tiles, once materialised
    _consumed: bool = field(default=False, repr=False)

    def __len__(self) -> int:
        """Number of tiles."""
        return len(self.boxes)

    def measure_quality(self) -> dict[str, float | None]:
        """The quality gate's image-level values (:func:`engine.quality.measure_overview`).

        Measured once, by whichever thread asks first (a second waits), and timed into
        ``timings["quality"]``. The daemon's reader asks right after handing the tiles to
        inference, so the measuring runs beside the forward pass instead of before it.
        """
        return {} if self.overview_measure is None else self.overview_measure.values(self.timings)

    @property
    def preview_rgb(self) -> np.ndarray:
        """(H / scale, W / scale, 3) uint8: the overview in the model's colours."""
        return self.preview.rgb()

    def iter_tiles(self, chunk: int) -> Iterator[torch.Tensor]:
        """(n <= chunk, 3, S, S) uint8 RGB tiles in plan order; closes the file at the end."""
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1 tile; got {chunk}")
        if self._rgb is not None:
            yield from self._rgb.split(chunk)
            return
        reader = self._reader
        if reader is None or reader.closed or self._consumed:
            raise InputError(
                f"{self.path}: its tiles were already read or the image was closed; "
                "prepare it again"
            )
        self._consumed = True
        try:
            for start in range(0, len(self.boxes), chunk):
                stop = min(len(self.boxes), start + chunk)
                tiles = reader.read(start, stop, self.timings)
                self._measure(start, stop, tiles)
                yield tiles
        finally:
            self.close()

    def _measure(self, start: int, stop: int, tiles: torch.Tensor) -> None:
        """The focus of tiles ``start:stop`` (engine.quality), into ``quality_tiles``."""
        if self.mask is None or len(self.quality_tiles) != len(self.boxes):
            return
        started = time.perf_counter()
        reduced = self.tile_size // FOCUS_DOWNSAMPLE
        masks = tile_masks(
            self.mask, self.boxes[start:stop], self.heatmap_scale, self.tile_px, reduced
        )
        for index, focus in enumerate(tile_focus(tiles, masks), start=start):
            self.quality_tiles[index]["focus"] = focus
        self.timings["quality"] = self.timings.get("quality", 0.0) + (
            time.perf_counter() - started
        )

    @property
    def tiles(self) -> torch.Tensor:
        """Every tile at once, normalised float32 (T, 3, S, S): for small images only.

        Holds all tiles in memory (as uint8, plus the float copy returned); a large
        mosaic should go through :meth:`iter_tiles` instead.
        """
        if self._rgb is None:
            self._rgb = torch.cat(list(self.iter_tiles(64)))
        return normalise_tiles(self._rgb, self.normalisation)

    def close(self) -> None:
        """Release the image file (idempotent; tiles already materialised stay)."""
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()

    def __enter__(self) -> PreparedImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

