"""Tissue geometry of a synthetic prostate margin: stroma, glands, fat and the inked edge.

Everything is laid out in micrometres and rasterised on a pixel grid of ``um_per_px``.
The result is a pair of noise-free *expected* signals, acridine-orange fluorescence and
reflectance, each (H, W) float32 roughly in [0, 1], that :mod:`._acquisition` turns into
what a scanner records.

What is drawn (intensities are fluorescence unless said otherwise):

- the specimen edge: one side of the image is outside the specimen (dark); along the
  boundary a thin, irregular band of surgical ink (bright in reflectance, quenches
  fluorescence). Tumour "at the margin" means tumour glands reach this band;
- stroma: dim, with wavy collagen fibres (bright in reflectance) and spindle nuclei
  aligned with them; smooth-muscle patches have denser, more parallel fibres;
- benign glands: large, branched (2-4 lobes), papillary infoldings, a tall luminal
  layer with small basal-lying nuclei plus a flat basal-cell layer; some lumens hold
  corpora amylacea (bright concentric bodies);
- atrophy (benign mimic): lobules of small glands with a thin, flattened, mostly single
  layer of small dark nuclei and scant cytoplasm;
- tumour: small round crowded glands (or solid nests) with a single layer of enlarged
  round nuclei with nucleoli and denser cytoplasm, infiltrating between benign glands;
- fat (periprostatic, near the edge): large empty vacuoles with thin membranes.

This module holds the specimen edge, the stroma fibres, fat, the smooth noise fields and
the composition (``draw_tissue``: where each kind of gland goes, then ``_compose``). The
glands themselves, the canvas they are drawn on and :class:`Style` are in
:mod:`._synth_glands` (``Style`` is re-exported here).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial import cKDTree

from ._synth_glands import Style, _add_gland, _Canvas, _place

__all__ = ["Style", "TissueFields", "draw_tissue"]

KINDS = ("benign", "atrophy", "tumour-margin", "tumour-focal", "tumour-inside")
AT_MARGIN_KINDS = ("tumour-margin", "tumour-focal")  # labelled tumour: it reaches the ink
FOCUS_AT_EDGE_UM = 40.0  # "at the margin": focus centre at most this deep from the edge
AT_INK_UM = 15.0  # ... and its first glands centred within this of the edge (on the ink)
INSIDE_MIN_EDGE_UM = 350.0  # "tumour-inside": no tumour gland centre nearer the edge


@dataclass
class TissueFields:
    """Noise-free expected signals, each (H, W) float32, and where tumour is."""

    fluorescence: np.ndarray
    reflectance: np.ndarray
    tumour: np.ndarray  # (H, W) bool: pixels inside tumour glands
    edge_side: int  # 0 top, 1 right, 2 bottom, 3 left: where the specimen ends
    kind: str


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """Gaussian random field, zero mean, unit std, correlation length ~scale_px; (H, W)."""
    if scale_px < 8:  # fine grain: filter at full resolution
        out = ndimage.gaussian_filter(rng.standard_normal(shape, np.float32), sigma=scale_px / 2)
    else:  # coarse: filter a small grid, then bilinear upsampling (Pillow: fast, deterministic)
        step = scale_px / 4.0
        small = (int(np.ceil(shape[0] / step)) + 3, int(np.ceil(shape[1] / step)) + 3)
        grid = ndimage.gaussian_filter(
            rng.standard_normal(small, np.float32), sigma=2.0, mode="wrap"
        )
        size = (int(round(small[1] * step)), int(round(small[0] * step)))  # Pillow: (W, H)
        out = np.asarray(Image.fromarray(grid).resize(size, Image.BILINEAR))
        out = out[: shape[0], : shape[1]]
    out = out - out.mean()
    return (out / (out.std() + 1e-9)).astype(np.float32)


# --- specimen edge ------------------------------------------------------------------


def _edge_distance(rng: np.random.Generator, c: _Canvas, side: int) -> np.ndarray:
    """Signed distance (px) from the specimen edge; > 0 inside tissue. (H, W)."""
    n = c.w if side in (0, 2) else c.h
    depth = c.px(rng.uniform(40, 110))
    along = np.arange(n, dtype=np.float32)
    wave = np.zeros(n, np.float32)
    for period_um, amp_um in (
        (rng.uniform(500, 1400), rng.uniform(10, 40)),
        (rng.uniform(120, 300), rng.uniform(2, 10)),
    ):
        wave += c.px(amp_um) * np.sin(2 * np.pi * along * c.um / period_um + rng.uniform(0, 6.3))
    boundary = depth + wave  # distance from the image side to the edge
    yy = np.arange(c.h, dtype=np.float32)[:, None]
    xx = np.arange(c.w, dtype=np.float32)[None, :]
    if side == 0:
        return yy - boundary[None, :]
    if side == 2:
        return (c.h - 1 - yy) - boundary[None, :]
    if side == 3:
        return xx - boundary[:, None]
    return (c.w - 1 - xx) - boundary[:, None]


# --- stroma and fat -----------------------------------------------------------------


def _fibres(
    rng: np.random.Generator, c: _Canvas, muscle: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Collagen/muscle fibre texture in [0, 1], (H, W), and the fibre direction (radians)
    on a 4x coarser grid, (ceil(H/4), ceil(W/4)): fibres are the level lines of a warped
    linear ramp, so their direction is the ramp's gradient turned by 90 degrees."""
    shape = (c.h, c.w)
    yy = np.arange(c.h, dtype=np.float32)[:, None]
    xx = np.arange(c.w, dtype=np.float32)[None, :]
    total = np.zeros(shape, np.float32)
    gx_sum = np.zeros((len(range(0, c.h, 4)), len(range(0, c.w, 4))), np.float32)
    gy_sum = np.zeros_like(gx_sum)
    for family in range(3):
        theta = float(rng.uniform(0, np.pi))
        scale = c.px(rng.uniform(120, 300))
        psi = (
            xx * np.float32(np.cos(theta))
            + yy * np.float32(np.sin(theta))
            + np.float32(0.5 * scale) * smooth_noise(rng, shape, scale)
            + np.float32(c.px(4.0)) * smooth_noise(rng, shape, c.px(14))
        )
        period = c.px(rng.uniform(6, 12))
        lines = np.maximum(np.float32(0.0), np.cos(psi * np.float32(2 * np.pi / period))) ** 4
        breaks = np.clip(1.5 * (smooth_noise(rng, shape, c.px(rng.uniform(15, 30))) - 0.1), 0, 1)
        weight = np.clip(smooth_noise(rng, shape, c.px(250)) + 0.3 + 0.6 * (family == 0), 0, 1)
        if family == 0:
            weight = np.maximum(weight, muscle)
        total += weight * lines * breaks
        gy, gx = np.gradient(psi[::4, ::4])
        # orientation is axial (theta ~ theta + pi): average doubled angles via the sign
        sign = np.where(gx + gy >= 0, 1.0, -1.0).astype(np.float32)
        gx_sum += weight[::4, ::4] * gx * sign
        gy_sum += weight[::4, ::4] * gy * sign
    return np.clip(total, 0, 1), np.arctan2(gy_sum, gx_sum) + np.float32(np.pi / 2)


def _fat(rng: np.random.Generator, c: _Canvas, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Adipocytes inside ``region``: (membrane, vacuole) weights, each (H, W) in [0, 1]."""
    membrane = np.zeros((c.h, c.w), np.float32)
    vacuole = np.zeros((c.h, c.w), np.float32)
    if not region.any():
        return membrane, vacuole
    f = 2  # work at half resolution: cells are 50-100 um across
    small = region[::f, ::f]
    ys, xs = np.nonzero(small)
    cell_px = c.px(rng.uniform(55, 85)) / f
    n_seeds = max(4, int(small.sum() / (cell_px**2 * 0.8)))
    sy, sx = np.nonzero(ndimage.binary_dilation(small, iterations=int(cell_px)))
    pick = rng.integers(sy.size, size=n_seeds)
    seeds = np.column_stack([sx[pick], sy[pick]]).astype(np.float32) + rng.uniform(
        -0.5, 0.5, (n_seeds, 2)
    )
    d, _ = cKDTree(seeds).query(np.column_stack([xs, ys]).astype(np.float32), k=2)
    wall = np.clip(1.5 - (d[:, 1] - d[:, 0]) / max(0.6, c.px(2.0) / f), 0, 1)
    m_small = np.zeros(small.shape, np.float32)
    m_small[ys, xs] = wall
    up = np.kron(m_small, np.ones((f, f), np.float32))[: c.h, : c.w]
    membrane[: up.shape[0], : up.shape[1]] = ndimage.gaussian_filter(up, 0.6)
    vacuole[:] = region * (1 - membrane)
    return membrane, vacuole


# --- composition --------------------------------------------------------------------


def draw_tissue(
    rng: np.random.Generator, kind: str, shape: tuple[int, int], um_per_px: float, style: Style
) -> TissueFields:
    """Draw one margin image of ``kind`` (one of KINDS) at ``um_per_px``; (H, W) fields.

    The steps draw from ``rng`` in a fixed order (edge, fat, muscle, tumour focus,
    atrophy, then the benign, atrophic and tumour glands): the same seed, the same image.
    """
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    c = _Canvas(shape[0], shape[1], um_per_px)
    side = int(rng.integers(4))
    edge = _edge_distance(rng, c, side)
    tissue = np.clip(edge + 0.5, 0, 1).astype(np.float32)
    inside = edge > c.px(3)
    area_mm2 = inside.sum() * (um_per_px / 1000) ** 2
    fat_region = _clear_margin_of_fat(c, kind, edge, inside, _fat_region(rng, c, edge, inside))
    muscle = np.clip(smooth_noise(rng, shape, c.px(200)) - 0.6, 0, 1) * 2.0
    focus = _tumour_focus(rng, c, kind, edge, inside, fat_region)
    atrophy = _atrophic_lobules(rng, c, kind, inside & ~fat_region & ~focus)
    gland_area = ~fat_region & inside
    _benign_glands(rng, c, gland_area & ~atrophy, focus, edge, area_mm2, style)
    if atrophy.any():
        _atrophic_glands(rng, c, atrophy, style)
    if focus.any():
        _tumour_glands(rng, c, kind, focus, edge, style)
    return _compose(rng, c, kind, side, edge, tissue, fat_region, muscle, style)


def _fat_region(rng: np.random.Generator, c: _Canvas, edge: np.ndarray, inside: np.ndarray
                ) -> np.ndarray:
    """Periprostatic fat: a lobule touching the edge in some images; (H, W) bool."""
    fat_region = np.zeros(edge.shape, bool)
    if rng.random() < 0.4:
        blob = smooth_noise(rng, edge.shape, c.px(250)) + 1.6 * np.exp(
            -edge / c.px(rng.uniform(150, 400))
        )
        fat_region = (blob > rng.uniform(1.4, 2.0)) & inside
    return fat_region


def _clear_margin_of_fat(
    c: _Canvas, kind: str, edge: np.ndarray, inside: np.ndarray, fat_region: np.ndarray
) -> np.ndarray:
    """The fat region, pulled back from the ink when it covers the whole margin band of
    an at-margin kind: a lobule along the entire edge would leave no ink for the tumour
    to reach, and the label would not be decidable from the pixels. Other images keep
    their fat as drawn."""
    if kind in AT_MARGIN_KINDS and not (_margin_band(c, edge, inside) & ~fat_region).any():
        return fat_region & (edge > c.px(2 * FOCUS_AT_EDGE_UM))
    return fat_region


def _tumour_focus(
    rng: np.random.Generator, c: _Canvas, kind: str, edge: np.ndarray, inside: np.ndarray,
    fat_region: np.ndarray,
) -> np.ndarray:
    """Where tumour glands go; (H, W) bool, empty for benign kinds.

    The label must be decidable from the pixels (docs/synthetic-data.md): "at the margin"
    foci are centred on the ink (at most FOCUS_AT_EDGE_UM deep) and their first glands
    are placed touching it; a "tumour-inside" focus is cut back so that no tumour comes
    closer to the ink than INSIDE_MIN_EDGE_UM. Between the two lies a wide gap that no
    image falls into.
    """
    shape, um_per_px = edge.shape, c.um
    focus = np.zeros(shape, bool)
    if not kind.startswith("tumour"):
        return focus
    noise = smooth_noise(rng, shape, c.px(80))
    if kind == "tumour-inside":
        depth_um = min(rng.uniform(450, 700), 0.7 * min(shape) * um_per_px)
        mask = (edge > c.px(depth_um)) & (edge < c.px(depth_um + 400))
    else:
        mask = _margin_band(c, edge, inside)
    ys, xs = np.nonzero(mask & ~fat_region) if (mask & ~fat_region).any() else np.nonzero(mask)
    i = rng.integers(ys.size)
    radius_um = rng.uniform(60, 110) if kind == "tumour-focal" else rng.uniform(200, 450)
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    r = np.hypot((yy - ys[i]) * um_per_px, (xx - xs[i]) * um_per_px)
    focus = (r + 40 * noise < radius_um) & inside & ~fat_region
    if kind == "tumour-inside":
        focus &= edge > c.px(INSIDE_MIN_EDGE_UM)
    else:  # the noisy outline must not pull an at-margin focus off the ink
        focus |= (r < FOCUS_AT_EDGE_UM) & inside & ~fat_region
    return focus


def _margin_band(c: _Canvas, edge: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Where an at-margin focus may be centred: tissue at most FOCUS_AT_EDGE_UM deep."""
    return inside & (edge < c.px(FOCUS_AT_EDGE_UM))


def _atrophic_lobules(rng: np.random.Generator, c: _Canvas, kind: str, allowed: np.ndarray
                      ) -> np.ndarray:
    """Atrophic lobules (the benign mimic), also sometimes in other kinds; (H, W) bool."""
    shape, um_per_px = allowed.shape, c.um
    atrophy = np.zeros(shape, bool)
    n_lobules = rng.integers(1, 4) if kind == "atrophy" else int(rng.random() < 0.15)
    for _ in range(n_lobules):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        yy, xx = np.ogrid[: shape[0], : shape[1]]
        r = np.hypot((yy - cy) * um_per_px, (xx - cx) * um_per_px)
        atrophy |= (r < rng.uniform(150, 320)) & allowed
    return atrophy


def _benign_glands(
    rng: np.random.Generator, c: _Canvas, area: np.ndarray, focus: np.ndarray,
    edge: np.ndarray, tissue_mm2: float, style: Style,
) -> None:
    """Benign glands first, in ``area`` (tissue without fat or atrophy), sparser in the focus;
    their number scales with the specimen's area in the field, ``tissue_mm2``."""
    n_benign = int(tissue_mm2 * style.gland_density * rng.uniform(8, 16))
    outside_focus = np.nonzero(area & ~focus)
    anywhere = np.nonzero(area)
    for _ in range(n_benign):
        r0 = c.px(rng.uniform(30, 75) * style.gland_scale)
        coords = outside_focus if rng.random() < 0.8 else anywhere
        pos = _place(rng, c, coords, r0 * 1.9 + c.px(20), c.px(12), min_edge=(edge, r0 * 0.8))
        if pos is None:
            continue
        c.circles.append((pos[0], pos[1], r0 * 1.9 + c.px(20)))
        _add_gland(rng, c, "benign", pos[0], pos[1], r0, style)


def _atrophic_glands(rng: np.random.Generator, c: _Canvas, atrophy: np.ndarray, style: Style
                     ) -> None:
    """Small crowded glands filling the atrophic lobules."""
    coords = np.nonzero(atrophy)
    for _ in range(int(atrophy.sum() * (c.um / 1000) ** 2 * rng.uniform(250, 450))):
        r0 = c.px(rng.uniform(6, 20))
        pos = _place(rng, c, coords, r0 + c.px(6), c.px(rng.uniform(5, 15)), tries=8)
        if pos is not None:
            c.circles.append((pos[0], pos[1], r0 + c.px(6)))
            _add_gland(rng, c, "atrophy", pos[0], pos[1], r0, style)


def _tumour_glands(
    rng: np.random.Generator, c: _Canvas, kind: str, focus: np.ndarray, edge: np.ndarray,
    style: Style,
) -> None:
    """Tumour glands in the focus; at the margin the first two touch the ink."""
    focal = kind == "tumour-focal"
    n_tumour = (
        int(rng.integers(3, 8)) if focal else int(focus.sum() * (c.um / 1000) ** 2 * 900)
    )
    placed = 0
    coords = np.nonzero(focus)
    at_ink = focus & (edge < c.px(AT_INK_UM))
    # at the margin: the first glands go at the ink (two of them, so one lost to the
    # spacing rule still leaves tumour touching it); never fewer than 3 placed
    ink_coords = np.nonzero(at_ink) if kind != "tumour-inside" and at_ink.any() else coords
    for attempt in range(n_tumour * 6):
        if placed >= n_tumour or (attempt >= n_tumour * 3 and placed >= 3):
            break
        r0 = c.px(rng.uniform(3, 11)) if rng.random() < 0.85 else c.px(1.0)
        where = ink_coords if placed < 2 else coords
        pos = _place(rng, c, where, r0 + c.px(12), c.px(rng.uniform(1, 6)), tries=10)
        if pos is None:
            continue
        c.circles.append((pos[0], pos[1], r0 + c.px(12)))
        _add_gland(rng, c, "tumour", pos[0], pos[1], r0, style)
        placed += 1


def _compose(
    rng: np.random.Generator,
    c: _Canvas,
    kind: str,
    side: int,
    edge: np.ndarray,
    tissue: np.ndarray,
    fat_region: np.ndarray,
    muscle: np.ndarray,
    style: Style,
) -> TissueFields:
    from ._stamps import stamp_amylacea, stamp_nuclei

    shape = (c.h, c.w)
    membrane, vacuole = _fat(rng, c, fat_region & ~c.occupied)
    fibres, direction = _fibres(rng, c, muscle)
    epi = np.clip(c.luminal + c.basal, 0, 1)
    stroma = np.clip(1 - c.lumen - epi - membrane - vacuole, 0, 1)

    grain = smooth_noise(rng, shape, c.px(1.5))
    cyto = c.cyto_level * (1 + 0.12 * grain) * (c.luminal + 0.7 * c.basal)
    f = stroma * style.stroma * (0.75 + 0.9 * fibres + 0.1 * grain)
    f += cyto + c.lumen * 0.025 + membrane * 0.16 + vacuole * 0.015
    r = (
        stroma * (0.18 + 0.55 * fibres)
        + epi * 0.14
        + c.lumen * 0.04
        + membrane * 0.75
        + vacuole * 0.02
    )

    # stromal spindle nuclei, aligned with the fibres
    free = (stroma > 0.9) & (edge > 1)
    density_per_px = (c.um / 1000) ** 2 * rng.uniform(900, 1600)
    count = int(free.sum() * density_per_px)
    ys, xs = np.nonzero(free)
    pick = rng.integers(ys.size, size=count) if ys.size else np.zeros(0, int)
    ys, xs = ys[pick], xs[pick]
    n = ys.size
    c.nuclei.append(
        (
            xs + rng.uniform(0, 1, n),
            ys + rng.uniform(0, 1, n),
            c.px(rng.uniform(5, 9, n)),
            c.px(rng.uniform(1.1, 1.7, n)),
            direction[ys // 4, xs // 4],
            style.nucleus * rng.uniform(0.6, 0.95, n),
            np.zeros(n, bool),
        )
    )

    nuclei = stamp_nuclei(shape, c.nuclei, c.um)
    chromatin = 0.8 + 0.25 * smooth_noise(rng, shape, c.px(1.0))
    f = f * (1 - np.clip(nuclei, 0, 1)) + nuclei * chromatin
    r = r * (1 - 0.6 * np.clip(nuclei, 0, 1))
    if c.amylacea:
        body = stamp_amylacea(shape, c.amylacea, c.um)
        f = np.maximum(f, 0.55 * body)
        r = np.maximum(r, 0.8 * body)

    # surgical ink along the edge: reflective, quenches fluorescence
    ink_width = c.px(rng.uniform(6, 16)) * (0.6 + 0.4 * smooth_noise(rng, shape, c.px(60)))
    ink = np.clip(ink_width - edge, 0, 1) * tissue * (smooth_noise(rng, shape, c.px(40)) > -1.2)
    f = f * tissue * (1 - 0.6 * ink) + 0.008
    r = r * style.reflectance * tissue * (1 - ink) + 0.85 * ink + 0.01
    return TissueFields(f.astype(np.float32), r.astype(np.float32), c.tumour, side, kind)
