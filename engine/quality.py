"""The quality gate: is this scan good enough to be read at all?

FCM scans go wrong in theatre (out of focus, saturated or faint stain, air bubbles,
too little tissue on the window, stitching seams). On such a scan the CNN's "clear" is
not a negative result, so the engine measures, on the tissue mask:

================== ============ ===== ===========================================
name               where        bad   what
================== ============ ===== ===========================================
focus              tiles        below median over tiles of the Laplacian
                                      energy over the gradient energy, at the
                                      model's um/px (:func:`tile_focus`)
saturated_fraction overview     above share of tissue at >= 98 % of full scale
signal_range       overview     below stain dynamic range: 99th percentile on
                                      tissue minus the 1st overall, / full scale
tissue_fraction    overview     below share of the field that is tissue
void_fraction      overview     above share of the tissue in glass-dark voids at
                                      least ``VOID_MIN_UM`` across (bubbles)
seam_score         overview     above strongest straight step along a whole column
                                      or row, over the median one
kept_tissue_share  tiles        below tissue in the tiles that passed / all
================== ============ ===== ===========================================

A tile whose focus or saturated fraction fails is left out of the decision. An image
fails if any image-level check fails or too little tissue remains; it is then "not
assessable", with every reason named as value against threshold
(``out of focus: focus 12.3 < 40.0``), never a result.

Every measurement is finite or ``None`` ("not measurable": too few tissue pixels);
``None`` fails its check, except for voids and seams (too small a field to find one is
no evidence of one). Degenerate images (constant, black, saturated, 1 px wide)
therefore end not assessable with a reason instead of dividing by zero.

Thresholds come from the model card (:class:`~marginwatch.engine.card.QualityThresholds`,
derived by ``marginwatch train`` from the training images), else
:data:`SHIPPED_THRESHOLDS`; every one can be overridden by ``engine.quality_<name>``.
Axis order: overview arrays (h, w[, C]); tiles (n, 3, S, S) uint8; tile masks (n, S, S).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ._morphology import box_mean_strided, dilate_disc, erode_cross, finite_array, true_box
from .card import QualityThresholds
from .tiling import Box, overview_window

__all__ = [
    "CHECKS",
    "FOCUS_DOWNSAMPLE",
    "SHIPPED_THRESHOLDS",
    "Measurement",
    "QualityReport",
    "effective_thresholds",
    "gate",
    "measure_overview",
    "tile_focus",
    "tile_masks",
    "tile_saturation",
]

SATURATED_LEVEL = 0.98  # of the dtype's full scale
VOID_MIN_UM = 50.0  # a void at least this wide (a disc's diameter) counts
VOID_LEVEL = 0.15  # ... and darker than this share of the tissue's bulk signal
MIN_MEASURE_PX = 64  # fewer tissue pixels than this: not measurable
FOCUS_SCALE = 100.0
SEAM_EDGE_PX = 3  # overview pixels of tissue edge left out of the seam score
FOCUS_DOWNSAMPLE = 2  # focus is measured at 2 x the model's um/px: pixel noise halves


@dataclass(frozen=True)
class Check:
    label: str  # what a person reads first
    bad: Literal["below", "above"]
    where: Literal["image", "tiles"]
    unmeasurable_fails: bool = True  # False: no evidence of the defect is no reason to stop


CHECKS: dict[str, Check] = {
    "focus": Check("out of focus", "below", "tiles"),
    "saturated_fraction": Check("saturated", "above", "image"),
    "signal_range": Check("faint staining", "below", "image"),
    "tissue_fraction": Check("too little tissue", "below", "image"),
    "void_fraction": Check("voids (air bubbles)", "above", "image", unmeasurable_fails=False),
    "seam_score": Check("stitching seams", "above", "image", unmeasurable_fails=False),
    "kept_tissue_share": Check("too little tissue passed the quality gate", "below", "tiles"),
}

# Derived by tools/_quality_thresholds.py from 50 clean synthetic development-centre
# training images (seed 100; docs/quality.md), rounded; tissue_fraction_min lowered from
# the derived 0.43 to 0.25 so that a specimen whose edge is in view still passes. Used when
# a model card carries no thresholds of its own.
SHIPPED_THRESHOLDS = QualityThresholds(
    focus_min=165.0,
    saturated_fraction_max=0.05,
    signal_range_min=0.15,
    tissue_fraction_min=0.25,
    void_fraction_max=0.02,
    seam_score_max=10.0,
    kept_tissue_share_min=0.5,
    derived_from="shipped defaults (50 clean synthetic development-centre images)",
)


def _fmt(value: float) -> str:
    size = abs(value)
    if size >= 100:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


@dataclass(frozen=True)
class Measurement:
    """One check: its value (None: not measurable), threshold, and which way is bad."""

    name: str
    value: float | None
    threshold: float | None  # None: not checked

    @property
    def check(self) -> Check:
        return CHECKS[self.name]

    @property
    def passed(self) -> bool:
        if self.threshold is None:
            return True
        if self.value is None:
            return not self.check.unmeasurable_fails
        if self.check.bad == "below":
            return self.value >= self.threshold
        return self.value <= self.threshold

    @property
    def reason(self) -> str:
        """``out of focus: focus 12.3 < 40.0``."""
        label = self.check.label
        if self.value is None:
            return f"{label}: {self.name} not measurable (too little tissue in view)"
        op = "<" if self.check.bad == "below" else ">"
        return f"{label}: {self.name} {_fmt(self.value)} {op} {_fmt(self.threshold or 0.0)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": None if self.value is None else round(self.value, 6),
            "threshold": self.threshold,
            "bad": self.check.bad,
            "passed": self.passed,
        }


@dataclass(frozen=True)
class QualityReport:
    """The gate's verdict on one image."""

    measurements: tuple[Measurement, ...]
    tiles_total: int
    tiles_kept: tuple[int, ...]  # indices into the plan of the tiles that passed
    tiles_gated: Mapping[str, int] = field(default_factory=dict)  # check name -> tiles failed

    @property
    def passed(self) -> bool:
        return all(m.passed for m in self.measurements)

    @property
    def failed(self) -> list[Measurement]:
        return [m for m in self.measurements if not m.passed]

    @property
    def reason(self) -> str:
        """Every failed check, most telling first; empty when the image passed."""
        return "; ".join(m.reason for m in self.failed)

    def value(self, name: str) -> float | None:
        for m in self.measurements:
            if m.name == name:
                return m.value
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: stored with the prediction, printed by ``predict --json``."""
        return {
            "passed": self.passed,
            "reason": self.reason or None,
            "measurements": {m.name: m.to_dict() for m in self.measurements},
            "tiles": {
                "total": self.tiles_total,
                "kept": len(self.tiles_kept),
                "gated": dict(self.tiles_gated),
            },
        }


def effective_thresholds(
    card_thresholds: QualityThresholds | None, overrides: Mapping[str, float | None]
) -> QualityThresholds:
    """The card's thresholds (else the shipped ones), with non-None ``overrides`` on top.

    ``overrides`` maps threshold field names (``focus_min``...) to values, as
    ``EngineConfig.quality_overrides()`` returns them.
    """
    base = card_thresholds or SHIPPED_THRESHOLDS
    update = {k: v for k, v in overrides.items() if v is not None}
    if not update:
        return base
    return base.model_copy(update={**update, "derived_from": f"{base.derived_from} + config"})


# --- measuring ----------------------------------------------------------------------


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def measure_overview(
    absolute: np.ndarray, scaled: np.ndarray, mask: np.ndarray, um_per_overview_px: float
) -> dict[str, float | None]:
    """Image-level measurements on the overview.

    ``absolute``: (h, w) nuclear / fluorescence signal as a share of the dtype's full
    scale (exposure); ``scaled``: the same, percentile-scaled to [0, 1] (structure);
    ``mask``: (h, w) bool tissue mask (holes filled).
    """
    absolute = finite_array(absolute)
    scaled = finite_array(scaled)
    area = int(mask.sum())
    out: dict[str, float | None] = {"tissue_fraction": float(mask.mean()) if mask.size else 0.0}
    if area < MIN_MEASURE_PX:
        out.update(saturated_fraction=None, signal_range=None, void_fraction=None,
                   seam_score=None)
        return out
    tissue = absolute[mask]
    sample = tissue[:: max(1, tissue.size // 65536)]  # percentiles of a 64 k sample
    out["saturated_fraction"] = float((tissue >= SATURATED_LEVEL).mean())
    out["signal_range"] = _finite(
        float(np.percentile(sample, 99))
        - float(np.percentile(absolute.ravel()[:: max(1, absolute.size // 65536)], 1))
    )
    out["void_fraction"] = _void_fraction(scaled, mask, um_per_overview_px)
    # away from the tissue's edge, where every line would step from glass to tissue
    inner = erode_cross(mask, SEAM_EDGE_PX)
    out["seam_score"] = _seam_score(scaled, inner)
    return out


def _void_fraction(scaled: np.ndarray, mask: np.ndarray, um_per_px: float) -> float | None:
    """Share of the tissue's envelope in dark regions at least VOID_MIN_UM across.

    The envelope is the tissue mask closed by ``VOID_MIN_UM`` (so a bubble at the
    tissue's edge, which the mask leaves open, still counts); a void is glass-dark
    signal that survives an opening by a disc of the minimum void's size. Disc
    convolutions by FFT do the morphology: cheap at any radius.
    """
    radius = max(1.0, VOID_MIN_UM / 2 / max(um_per_px, 1e-6))
    step = max(1, int(radius // 4))  # a void is >= 8 grid cells across: coarser is enough
    scaled = box_mean_strided(scaled, step + 2, step)
    mask, radius = mask[::step, ::step], radius / step
    if mask.sum() < MIN_MEASURE_PX // 4:
        return None
    pad = int(math.ceil(2 * radius)) + 1  # outside the image counts as not tissue
    padded = np.pad(mask, pad)
    envelope = ~dilate_disc(~dilate_disc(padded, 2 * radius), 2 * radius)  # closed
    envelope = envelope[pad:-pad, pad:-pad] | mask
    smooth = scaled  # smoothed before it was strided
    floor, bulk = np.percentile(smooth[mask], [0.5, 75])
    if (~mask).sum() >= MIN_MEASURE_PX:  # glass in view: a void is as dark as glass
        floor = min(float(floor), float(np.median(smooth[~mask])))
    if not bulk > 0:
        return None
    # glass-dark: near the floor, and far below the tissue (gland lumens are not that dark)
    dark = envelope & (smooth < min(floor + 0.1 * (bulk - floor), VOID_LEVEL * bulk))
    if not dark.any():
        return 0.0  # the usual clean scan: nothing is glass-dark inside the tissue
    dark = dark[true_box(dark)]  # the opening stays inside dark's box: work only there
    core = ~dilate_disc(~dark, radius)  # erode ...
    if not core.any():
        return 0.0  # nothing survives the opening
    opened = dilate_disc(core, radius) & dark  # ... dilate
    return float(opened.sum() / max(1, envelope.sum()))


def _seam_score(scaled: np.ndarray, mask: np.ndarray) -> float | None:
    """Strongest straight step across the tissue, against the typical one.

    For each column (and row), the signed differences to the next one over the tissue
    rows, summed and divided by the root of their summed squares (a t statistic, about
    |N(0, 1)| for texture whatever the line's length); the score is the largest over the
    median. Texture averages out along a line; a stitching seam (a gain step or an
    overlap line running the whole length) does not.
    """
    scores = []
    for axis in (1, 0):
        step = np.diff(scaled, axis=axis)
        both = mask[:, 1:] & mask[:, :-1] if axis == 1 else mask[1:] & mask[:-1]
        other = 0 if axis == 1 else 1  # sum along the lines parallel to the seam
        counts = np.count_nonzero(both, axis=other)
        if counts.size < 8 or counts.max() < 16:
            continue
        usable = counts >= 16
        on_tissue = step * both
        signed = on_tissue.sum(axis=other)[usable]
        power = (on_tissue * step).sum(axis=other)[usable]
        if signed.size < 8:
            continue
        # |sum| / sqrt(sum of squares): about |N(0, 1)| for texture, whatever the length
        t = np.abs(signed) / np.sqrt(power + 1e-12)
        typical = float(np.median(t))
        if typical > 1e-6:
            scores.append(float(t.max()) / typical)
    return _finite(max(scores)) if scores else None


def tile_saturation(absolute: np.ndarray, mask: np.ndarray, box: Box, factor: int) -> float | None:
    """Share of the tissue under ``box`` (source px) at saturation, on the overview.

    ``absolute`` and ``mask`` as for :func:`measure_overview`; None where fewer than a
    quarter of ``MIN_MEASURE_PX`` tissue pixels lie under the box (NaN is not saturated).
    """
    window = overview_window(box, factor)
    tissue = mask[window]
    area = int(np.count_nonzero(tissue))
    if area < MIN_MEASURE_PX // 4:
        return None
    return np.count_nonzero((absolute[window] >= SATURATED_LEVEL) & tissue) / area


def tile_masks(
    mask: np.ndarray, boxes: Sequence[Box], factor: int, tile_px: int, size: int
) -> torch.Tensor:
    """(n, S, S) bool: the overview tissue mask under each tile, at the tile's pixels.

    Mirrors the tile rendering: the clipped box scaled by ``size / tile_px`` into the
    top-left corner, the padding outside it False. ``size`` may be the tile side
    reduced (the focus measure works at S / FOCUS_DOWNSAMPLE).
    """
    out = torch.zeros((len(boxes), size, size), dtype=torch.bool)
    mh, mw = mask.shape
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        out_h = min(size, max(1, round((y1 - y0) * size / tile_px)))
        out_w = min(size, max(1, round((x1 - x0) * size / tile_px)))
        rows = np.clip((y0 + (np.arange(out_h) + 0.5) * (y1 - y0) / out_h) // factor, 0, mh - 1)
        cols = np.clip((x0 + (np.arange(out_w) + 0.5) * (x1 - x0) / out_w) // factor, 0, mw - 1)
        out[i, :out_h, :out_w] = torch.from_numpy(
            mask[rows.astype(np.intp)][:, cols.astype(np.intp)]
        )
    return out


_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])[None, None]


def tile_focus(tiles: torch.Tensor, masks: torch.Tensor) -> list[float | None]:
    """Focus of each (3, S, S) uint8 tile on its tissue: normalised Laplacian energy.

    ``FOCUS_SCALE * sum(lap(g)^2) / sum(|grad g|^2)`` over tissue, with ``g`` the tile's
    green channel (the nuclear contrast of digital H&E) reduced ``FOCUS_DOWNSAMPLE``
    times: the energy of the finest detail against that of all edges, so it does not
    depend on contrast (faint and bright scans of the same sharp tissue score alike)
    nor on the tile's size, and falls as blur removes the fine detail first.
    ``masks``: (n, S / k, S / k) bool (:func:`tile_masks` at the reduced size). None
    where fewer than ``MIN_MEASURE_PX`` tissue pixels remain.
    """
    if len(tiles) == 0:
        return []
    k = FOCUS_DOWNSAMPLE
    green = tiles[:, 1].float()  # (n, S, S)
    g = F.avg_pool2d(green[:, None], k)[:, 0] / 255.0 if k > 1 else green / 255.0
    # 4-neighbour Laplacian on the valid interior (s - 2, s - 2)
    lap = g[:, :-2, 1:-1] + g[:, 2:, 1:-1] + g[:, 1:-1, :-2] + g[:, 1:-1, 2:] - 4 * g[:, 1:-1, 1:-1]
    # valid away from the tissue edge: the mask eroded by one pixel
    m = masks[:, : g.shape[1], : g.shape[2]].float()
    sel = -F.max_pool2d(-m[:, None], 3, 1)[:, 0]
    gx = g[:, 1:-1, 2:] - g[:, 1:-1, :-2]  # central differences (x 2)
    gy = g[:, 2:, 1:-1] - g[:, :-2, 1:-1]
    n = sel.sum(dim=(1, 2), dtype=torch.float64)
    # float32 per pixel, float64 sums: the sums of ~10^5 terms keep their digits
    energy = (lap * lap * sel).sum(dim=(1, 2), dtype=torch.float64)
    gradient = ((gx * gx + gy * gy) * sel).sum(dim=(1, 2), dtype=torch.float64) / 4
    out: list[float | None] = []
    for count, e, d in zip(n.tolist(), energy.tolist(), gradient.tolist(), strict=True):
        if count < MIN_MEASURE_PX:
            out.append(None)
        elif not d > 1e-12:
            out.append(0.0)  # flat: no detail at all
        else:
            out.append(_finite(FOCUS_SCALE * e / d))
    return out


# --- deciding -----------------------------------------------------------------------


def gate(
    image_values: Mapping[str, float | None],
    tile_values: Sequence[Mapping[str, float | None]],
    tissue_fractions: Sequence[float],
    thresholds: QualityThresholds,
) -> QualityReport:
    """Measurements against thresholds: which tiles pass, and does the image."""
    kept, gated = [], Counter()
    for index, values in enumerate(tile_values):
        failed = [
            name for name, threshold in (
                ("focus", thresholds.focus_min),
                ("saturated_fraction", thresholds.saturated_fraction_max),
            )
            # an unmeasured tile saturation is no reason to drop it; an unmeasured focus is
            if (name == "focus" or values.get(name) is not None)
            and name in values
            and not Measurement(name, values[name], threshold).passed
        ]
        gated.update(failed)
        if not failed:
            kept.append(index)
    focus = [v["focus"] for v in tile_values if v.get("focus") is not None]
    total_tissue = float(sum(tissue_fractions))
    kept_share = (
        float(sum(tissue_fractions[i] for i in kept)) / total_tissue if total_tissue > 0 else 0.0
    )
    measurements = (
        Measurement("tissue_fraction", image_values.get("tissue_fraction"),
                    thresholds.tissue_fraction_min),
        Measurement("focus", float(np.median(focus)) if focus else None, thresholds.focus_min),
        Measurement("saturated_fraction", image_values.get("saturated_fraction"),
                    thresholds.saturated_fraction_max),
        Measurement("signal_range", image_values.get("signal_range"),
                    thresholds.signal_range_min),
        Measurement("void_fraction", image_values.get("void_fraction"),
                    thresholds.void_fraction_max),
        Measurement("seam_score", image_values.get("seam_score"), thresholds.seam_score_max),
        Measurement("kept_tissue_share", kept_share, thresholds.kept_tissue_share_min),
    )
    return QualityReport(measurements, len(tile_values), tuple(kept), dict(gated))
