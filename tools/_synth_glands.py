"""Glands of a synthetic prostate margin, and the canvas they are rasterised on.

Split out of :mod:`._synth_tissue` (which composes the whole image and re-exports
:class:`Style`). Here:

- :class:`Style`, the stain and tissue appearance the glands are drawn with;
- ``_Canvas``, the pixel grid (at ``um`` micrometres per pixel) that collects the lumen,
  epithelial layers, cytoplasm level, occupancy and tumour masks, plus the queued nuclei,
  corpora amylacea and gland footprints;
- ``_add_gland`` (benign: branched, papillary, two layers; atrophy: small, flattened;
  tumour: small, round, one layer of enlarged nuclei), with its lobe outline helpers
  ``_lobe_radius`` / ``_radius_at``, and ``_place``, which finds a centre whose
  footprint overlaps no earlier gland. A gland is drawn in steps: ``_gland_layout``
  (layers, lobes), ``_trace_lumen``, ``_paint_layers``, then its kind's nuclei, queued
  at sites along ``_ring``s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = ["Style"]


@dataclass(frozen=True)
class Style:
    """Stain and tissue appearance; the centre and the patient each scale it."""

    nucleus: float = 1.0  # acridine-orange nuclear brightness
    cytoplasm: float = 0.34
    stroma: float = 0.11
    reflectance: float = 1.0  # reflectance gain
    gland_density: float = 1.0
    gland_scale: float = 1.0


@dataclass
class _Canvas:
    h: int
    w: int
    um: float  # micrometres per pixel
    lumen: np.ndarray = field(init=False)
    luminal: np.ndarray = field(init=False)
    basal: np.ndarray = field(init=False)
    cyto_level: np.ndarray = field(init=False)
    occupied: np.ndarray = field(init=False)
    tumour: np.ndarray = field(init=False)
    nuclei: list = field(default_factory=list)  # arrays (x, y, a, b, theta, value, nucleolus)
    amylacea: list = field(default_factory=list)  # (x, y, r)
    circles: list = field(default_factory=list)  # (x, y, r) footprints for spacing

    def __post_init__(self) -> None:
        shape = (self.h, self.w)
        self.lumen = np.zeros(shape, np.float32)
        self.luminal = np.zeros(shape, np.float32)
        self.basal = np.zeros(shape, np.float32)
        self.cyto_level = np.zeros(shape, np.float32)
        self.occupied = np.zeros(shape, bool)
        self.tumour = np.zeros(shape, bool)

    def px(self, um: float) -> float:
        return um / self.um


# --- glands -------------------------------------------------------------------------


def _lobe_radius(rng: np.random.Generator, r0: float, kind: str) -> tuple:
    harmonics = [
        (k, rng.uniform(0, 0.12 if kind == "benign" else 0.06), rng.uniform(0, 6.3))
        for k in (2, 3, 4)
    ]
    folds = []
    if kind == "benign":
        for _ in range(rng.integers(3, 8)):  # papillary infoldings: broad, round-tipped
            folds.append(
                (rng.uniform(0, 2 * np.pi), rng.uniform(0.25, 0.5), rng.uniform(0.12, 0.25))
            )
    return r0, harmonics, folds


def _radius_at(phi: np.ndarray, lobe: tuple) -> np.ndarray:
    r0, harmonics, folds = lobe
    r = np.ones_like(phi)
    for k, a, p in harmonics:
        r += a * np.cos(k * phi + p)
    for centre, depth, width in folds:
        d = (phi - centre + np.pi) % (2 * np.pi) - np.pi
        r -= depth * np.exp(-((d / width) ** 2))
    return r0 * r


@dataclass(frozen=True)
class _Gland:
    """One drawn gland, in its window of the canvas: what its nuclei are placed along."""

    x0: int  # the window's corner on the canvas
    y0: int
    t1: float  # luminal layer thickness, px
    t2: float  # basal layer thickness, px (0: tumour has none)
    lumen: np.ndarray
    dist: np.ndarray  # px from the lumen
    free: np.ndarray  # pixels no earlier gland had drawn on
    normal: np.ndarray  # direction away from the lumen, radians


def _add_gland(
    rng: np.random.Generator, c: _Canvas, kind: str, cx: float, cy: float, r0: float, style: Style
) -> None:
    """Rasterise one gland (lumen, epithelial layers) and queue its nuclei.

    The steps draw from ``rng`` in a fixed order (layout, then nuclei): a seed must keep
    giving the same image.
    """
    t1, t2, lobes = _gland_layout(rng, c, kind, r0)
    traced = _trace_lumen(c, cx, cy, t1, t2, lobes)
    if traced is None:
        return
    window, lumen = traced
    g = _paint_layers(c, kind, style, window, lumen, t1, t2)
    if kind == "benign":
        _benign_nuclei(rng, c, g, style)
        _corpora_amylacea(rng, c, g)
    elif kind == "atrophy":
        _atrophy_nuclei(rng, c, g, style)
    else:
        _tumour_nuclei(rng, c, g, style)


def _gland_layout(
    rng: np.random.Generator, c: _Canvas, kind: str, r0: float
) -> tuple[float, float, list[tuple[float, float, tuple]]]:
    """Luminal and basal layer thicknesses (px) and the lobes (dx, dy, outline) of a gland."""
    if kind == "benign":
        t1, t2 = c.px(rng.uniform(11, 17)), c.px(rng.uniform(3.5, 5))
        lobes = [(0.0, 0.0, _lobe_radius(rng, r0, kind))]
        for _ in range(rng.integers(0, 4)):  # branching: satellite lobes
            ang = rng.uniform(0, 2 * np.pi)
            dist = r0 * rng.uniform(0.7, 1.1)
            lobes.append(
                (
                    dist * np.cos(ang),
                    dist * np.sin(ang),
                    _lobe_radius(rng, r0 * rng.uniform(0.45, 0.7), kind),
                )
            )
    elif kind == "atrophy":
        t1, t2 = c.px(rng.uniform(3.5, 5.5)), c.px(2.5)
        lobes = [(0.0, 0.0, _lobe_radius(rng, r0, kind))]
    else:  # tumour: one layer, no basal cells
        t1, t2 = c.px(rng.uniform(9, 13)), 0.0
        lobes = [(0.0, 0.0, _lobe_radius(rng, r0, kind))]
    return t1, t2, lobes


def _trace_lumen(
    c: _Canvas,
    cx: float,
    cy: float,
    t1: float,
    t2: float,
    lobes: list[tuple[float, float, tuple]],
) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """The gland's window on the canvas (lobes plus layers t1 + t2) and its lumen there;
    None when the window is off the canvas or the lumen is empty."""
    extent = max(abs(dx) + lb[0] * 1.4 for dx, dy, lb in lobes)
    extent = max(extent, max(abs(dy) + lb[0] * 1.4 for dx, dy, lb in lobes)) + t1 + t2 + 3
    x0, x1 = int(max(0, cx - extent)), int(min(c.w, cx + extent + 1))
    y0, y1 = int(max(0, cy - extent)), int(min(c.h, cy + extent + 1))
    if x1 - x0 < 3 or y1 - y0 < 3:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    lumen = np.zeros(xx.shape, bool)
    for dx, dy, lobe in lobes:
        ox, oy = xx - (cx + dx), yy - (cy + dy)
        lumen |= np.hypot(ox, oy) < _radius_at(np.arctan2(oy, ox), lobe)
    if not lumen.any():
        return None
    return (slice(y0, y1), slice(x0, x1)), lumen


def _paint_layers(
    c: _Canvas,
    kind: str,
    style: Style,
    window: tuple[slice, slice],
    lumen: np.ndarray,
    t1: float,
    t2: float,
) -> _Gland:
    """Draw the lumen and epithelial layers where no earlier gland is, and claim the footprint
    (cytoplasm level, occupancy, tumour mask)."""
    free = ~c.occupied[window]
    dist = ndimage.distance_transform_edt(~lumen).astype(np.float32)
    luminal = np.clip(t1 + 0.5 - dist, 0, 1) * (~lumen)
    basal = np.clip(t1 + t2 + 0.5 - dist, 0, 1) * (~lumen) - luminal
    c.lumen[window] = np.where(free, np.maximum(c.lumen[window], lumen), c.lumen[window])
    c.luminal[window] = np.where(free, np.maximum(c.luminal[window], luminal), c.luminal[window])
    c.basal[window] = np.where(free, np.maximum(c.basal[window], basal), c.basal[window])
    level = {"benign": 1.0, "atrophy": 0.85, "tumour": 1.3}.get(kind, 1.3) * style.cytoplasm
    foot = (lumen | (dist <= t1 + t2 + 0.5)) & free
    c.cyto_level[window][foot] = level
    c.occupied[window] |= foot
    if kind == "tumour":
        c.tumour[window] |= foot
    gy, gx = np.gradient(dist)
    rows, cols = window
    return _Gland(cols.start, rows.start, t1, t2, lumen, dist, free, np.arctan2(gy, gx))


def _ring(
    rng: np.random.Generator, g: _Gland, target: float, spacing_px: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nucleus sites (ys, xs in the window, outward angle) ``target`` px out from the lumen,
    about ``spacing_px`` apart."""
    sel = (np.abs(g.dist - target) < 0.75) & ~g.lumen & g.free
    ys, xs = np.nonzero(sel)
    if ys.size == 0:
        return ys, xs, ys.astype(np.float32)
    # one nucleus per spacing-sized cell of a grid, then drop near pairs
    order = rng.permutation(ys.size)
    ys, xs = ys[order], xs[order]
    cell = (ys // spacing_px).astype(np.int64) * 100000 + (xs // spacing_px).astype(np.int64)
    _, first = np.unique(cell, return_index=True)
    ys, xs = ys[first], xs[first]
    if ys.size > 1:
        pts = np.column_stack([xs, ys]).astype(np.float32)
        drop = {j for i, j in cKDTree(pts).query_pairs(spacing_px * 0.7)}
        keep = np.array([i not in drop for i in range(ys.size)])
        ys, xs = ys[keep], xs[keep]
    return ys, xs, g.normal[ys, xs]


def _queue_nuclei(
    c: _Canvas,
    g: _Gland,
    ys: np.ndarray,
    xs: np.ndarray,
    a: npt.ArrayLike,  # semi-axes, px (arrays: _Canvas.px is hinted for scalars)
    b: npt.ArrayLike,
    theta: np.ndarray,
    value: np.ndarray,
    nucleolus: np.ndarray,
) -> None:
    """Queue nuclei at window sites (ys, xs), centred on their pixels in canvas coordinates."""
    c.nuclei.append((xs + g.x0 + 0.5, ys + g.y0 + 0.5, a, b, theta, value, nucleolus))


def _benign_nuclei(rng: np.random.Generator, c: _Canvas, g: _Gland, style: Style) -> None:
    """Two layers: oval luminal nuclei, long axis along the normal, and (most places) flat
    basal ones lying along the outer edge."""
    ys, xs, th = _ring(rng, g, g.t1 - c.px(rng.uniform(3.5, 5.0)), c.px(7.5))
    n = ys.size
    a, b = c.px(rng.uniform(3.2, 4.0, n)), c.px(rng.uniform(2.3, 2.9, n))
    _queue_nuclei(
        c, g, ys, xs, a, b, th, style.nucleus * rng.uniform(0.75, 0.95, n), np.zeros(n, bool)
    )
    ys, xs, th = _ring(rng, g, g.t1 + g.t2 / 2, c.px(9.0))
    n = ys.size
    keep = rng.random(n) < 0.85
    _queue_nuclei(
        c,
        g,
        ys[keep],
        xs[keep],
        c.px(rng.uniform(3.8, 5, keep.sum())),
        c.px(rng.uniform(1.3, 1.8, keep.sum())),
        th[keep] + np.pi / 2,
        style.nucleus * rng.uniform(0.8, 1.0, keep.sum()),
        np.zeros(keep.sum(), bool),
    )


def _corpora_amylacea(rng: np.random.Generator, c: _Canvas, g: _Gland) -> None:
    """Now and then (35 %) a round concretion in a benign lumen, clear of its edge."""
    if rng.random() < 0.35:  # corpora amylacea in the main lumen
        inside = ndimage.distance_transform_edt(g.lumen)
        r_ca = c.px(rng.uniform(7, 22))
        ys, xs = np.nonzero(inside > r_ca + 2)
        if ys.size:
            i = rng.integers(ys.size)
            c.amylacea.append((xs[i] + g.x0, ys[i] + g.y0, r_ca))


def _atrophy_nuclei(rng: np.random.Generator, c: _Canvas, g: _Gland, style: Style) -> None:
    """One thin layer of flattened nuclei lying along the edge; basal cells only here and there."""
    ys, xs, th = _ring(rng, g, g.t1 * 0.5, c.px(7.0))
    n = ys.size
    _queue_nuclei(
        c,
        g,
        ys,
        xs,
        c.px(rng.uniform(3.2, 4.2, n)),
        c.px(rng.uniform(1.5, 2.0, n)),
        th + np.pi / 2,
        style.nucleus * rng.uniform(0.9, 1.1, n),
        np.zeros(n, bool),
    )
    ys, xs, th = _ring(rng, g, g.t1 + g.t2 / 2, c.px(12.0))
    keep = rng.random(ys.size) < 0.3  # basal cells only here and there
    n = int(keep.sum())
    _queue_nuclei(
        c,
        g,
        ys[keep],
        xs[keep],
        c.px(rng.uniform(3.5, 4.5, n)),
        c.px(rng.uniform(1.2, 1.6, n)),
        th[keep] + np.pi / 2,
        style.nucleus * rng.uniform(0.8, 1.0, n),
        np.zeros(n, bool),
    )


def _tumour_nuclei(rng: np.random.Generator, c: _Canvas, g: _Gland, style: Style) -> None:
    """One layer of enlarged, nearly round nuclei, most with a visible nucleolus."""
    ys, xs, th = _ring(rng, g, g.t1 * 0.5, c.px(9.5))
    n = ys.size
    a = c.px(rng.uniform(4.0, 5.5, n))
    _queue_nuclei(
        c,
        g,
        ys,
        xs,
        a,
        a * rng.uniform(0.8, 0.95, n),
        th,
        style.nucleus * rng.uniform(0.8, 1.05, n),
        rng.random(n) < 0.8,
    )


def _place(
    rng: np.random.Generator,
    c: _Canvas,
    coords: tuple[np.ndarray, np.ndarray],
    r_px: float,
    gap_px: float,
    tries: int = 40,
    min_edge: tuple[np.ndarray, float] | None = None,
) -> tuple[float, float] | None:
    """A centre among ``coords`` (ys, xs) whose disc of r_px (+gap) overlaps no earlier gland."""
    ys, xs = coords
    if ys.size == 0:
        return None
    arr = np.asarray(c.circles, np.float32).reshape(-1, 3)
    for _ in range(tries):
        i = rng.integers(ys.size)
        if min_edge is not None and min_edge[0][ys[i], xs[i]] < min_edge[1]:
            continue
        x, y = xs[i] + rng.uniform(0, 1), ys[i] + rng.uniform(0, 1)
        if arr.size:
            d = np.hypot(arr[:, 0] - x, arr[:, 1] - y)
            if np.any(d < arr[:, 2] + r_px + gap_px):
                continue
        return x, y
    return None
