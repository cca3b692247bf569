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
  footprint overlaps no earlier gland.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
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


def _add_gland(
    rng: np.random.Generator, c: _Canvas, kind: str, cx: float, cy: float, r0: float, style: Style
) -> None:
    """Rasterise one gland (lumen, epithelial layers) and queue its nuclei."""
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
    extent = max(abs(dx) + lb[0] * 1.4 for dx, dy, lb in lobes)
    extent = max(extent, max(abs(dy) + lb[0] * 1.4 for dx, dy, lb in lobes)) + t1 + t2 + 3
    x0, x1 = int(max(0, cx - extent)), int(min(c.w, cx + extent + 1))
    y0, y1 = int(max(0, cy - extent)), int(min(c.h, cy + extent + 1))
    if x1 - x0 < 3 or y1 - y0 < 3:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    lumen = np.zeros(xx.shape, bool)
    for dx, dy, lobe in lobes:
        ox, oy = xx - (cx + dx), yy - (cy + dy)
        lumen |= np.hypot(ox, oy) < _radius_at(np.arctan2(oy, ox), lobe)
    if not lumen.any():
        return
    already = c.occupied[y0:y1, x0:x1]
    dist = ndimage.distance_transform_edt(~lumen).astype(np.float32)
    luminal = np.clip(t1 + 0.5 - dist, 0, 1) * (~lumen)
    basal = np.clip(t1 + t2 + 0.5 - dist, 0, 1) * (~lumen) - luminal
    free = ~already
    c.lumen[y0:y1, x0:x1] = np.where(
        free, np.maximum(c.lumen[y0:y1, x0:x1], lumen), c.lumen[y0:y1, x0:x1]
    )
    c.luminal[y0:y1, x0:x1] = np.where(
        free, np.maximum(c.luminal[y0:y1, x0:x1], luminal), c.luminal[y0:y1, x0:x1]
    )
    c.basal[y0:y1, x0:x1] = np.where(
        free, np.maximum(c.basal[y0:y1, x0:x1], basal), c.basal[y0:y1, x0:x1]
    )
    level = {"benign": 1.0, "atrophy": 0.85, "tumour": 1.3}.get(kind, 1.3) * style.cytoplasm
    foot = (lumen | (dist <= t1 + t2 + 0.5)) & free
    c.cyto_level[y0:y1, x0:x1][foot] = level
    c.occupied[y0:y1, x0:x1] |= foot
    if kind == "tumour":
        c.tumour[y0:y1, x0:x1] |= foot

    gy, gx = np.gradient(dist)
    normal = np.arctan2(gy, gx)

    def ring(target: float, spacing_px: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sel = (np.abs(dist - target) < 0.75) & ~lumen & free
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
        return ys, xs, normal[ys, xs]

    if kind == "benign":
        ys, xs, th = ring(t1 - c.px(rng.uniform(3.5, 5.0)), c.px(7.5))
        n = ys.size
        a, b = c.px(rng.uniform(3.2, 4.0, n)), c.px(rng.uniform(2.3, 2.9, n))
        c.nuclei.append(
            (
                xs + x0 + 0.5,
                ys + y0 + 0.5,
                a,
                b,
                th,
                style.nucleus * rng.uniform(0.75, 0.95, n),
                np.zeros(n, bool),
            )
        )
        ys, xs, th = ring(t1 + t2 / 2, c.px(9.0))
        n = ys.size
        keep = rng.random(n) < 0.85
        c.nuclei.append(
            (
                xs[keep] + x0 + 0.5,
                ys[keep] + y0 + 0.5,
                c.px(rng.uniform(3.8, 5, keep.sum())),
                c.px(rng.uniform(1.3, 1.8, keep.sum())),
                th[keep] + np.pi / 2,
                style.nucleus * rng.uniform(0.8, 1.0, keep.sum()),
                np.zeros(keep.sum(), bool),
            )
        )
        if rng.random() < 0.35:  # corpora amylacea in the main lumen
            inside = ndimage.distance_transform_edt(lumen)
            r_ca = c.px(rng.uniform(7, 22))
            ys, xs = np.nonzero(inside > r_ca + 2)
            if ys.size:
                i = rng.integers(ys.size)
                c.amylacea.append((xs[i] + x0, ys[i] + y0, r_ca))
    elif kind == "atrophy":
        ys, xs, th = ring(t1 * 0.5, c.px(7.0))
        n = ys.size
        c.nuclei.append(
            (
                xs + x0 + 0.5,
                ys + y0 + 0.5,
                c.px(rng.uniform(3.2, 4.2, n)),
                c.px(rng.uniform(1.5, 2.0, n)),
                th + np.pi / 2,
                style.nucleus * rng.uniform(0.9, 1.1, n),
                np.zeros(n, bool),
            )
        )
        ys, xs, th = ring(t1 + t2 / 2, c.px(12.0))
        keep = rng.random(ys.size) < 0.3  # basal cells only here and there
        n = int(keep.sum())
        c.nuclei.append(
            (
                xs[keep] + x0 + 0.5,
                ys[keep] + y0 + 0.5,
                c.px(rng.uniform(3.5, 4.5, n)),
                c.px(rng.uniform(1.2, 1.6, n)),
                th[keep] + np.pi / 2,
                style.nucleus * rng.uniform(0.8, 1.0, n),
                np.zeros(n, bool),
            )
        )
    else:
        ys, xs, th = ring(t1 * 0.5, c.px(9.5))
        n = ys.size
        a = c.px(rng.uniform(4.0, 5.5, n))
        c.nuclei.append(
            (
                xs + x0 + 0.5,
                ys + y0 + 0.5,
                a,
                a * rng.uniform(0.8, 0.95, n),
                th,
                style.nucleus * rng.uniform(0.8, 1.05, n),
                rng.random(n) < 0.8,
            )
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
