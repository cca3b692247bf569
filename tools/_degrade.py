"""Synthetic scan failures for the quality gate: ``marginwatch synth --degrade KIND``.

Each degradation turns a clean synthetic scan into one a pathologist would reject, the
way FCM scans go wrong in theatre:

==========  ==============================================================================
blur        specimen not flat against the window: Gaussian defocus, sigma 1 + 7 S um
saturate    too much acridine orange / gain: signal x (1 + 6 S), clipped at full scale
faint       too little stain: signal x (1 - 0.92 S), read noise added back
bubbles     air bubbles: 1 + round(5 S) dark discs (radius 60..140 um) inside the tissue
partial     only part of the face touches the window: a share 0.9 S of the field is glass
seams       mosaic stitching: fields 256 um wide with gains 1 +- 0.35 S and a dark line
==========  ==============================================================================

``S`` (``--strength``) is in (0, 1]; 1 is a scan no one would read. The degradation
works in *signal* space (raw ADU minus the centre's offset for fluorescence and
reflectance; darkness ``1 - value`` for digital H&E RGB), so glass stays glass.

:func:`degrade_dataset` rewrites the TIFFs of a freshly written dataset in place and
adds the truth to ``manifest.csv``: columns ``degradation`` and ``strength``. Image
``i`` draws from ``SeedSequence([seed, 7919, i])``: the same arguments give the same
bytes.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import tifffile
from marginwatch.engine.errors import ConfigError
from scipy import ndimage

from ._acquisition import CENTRES

__all__ = ["DEGRADATIONS", "check_degradation", "degrade", "degrade_dataset"]

DEGRADATIONS = ("blur", "saturate", "faint", "bubbles", "partial", "seams")
_SEED_KEY = 7919


def check_degradation(kind: str, strength: float) -> None:
    """ConfigError unless ``kind`` is a degradation and ``strength`` lies in (0, 1]."""
    if kind not in DEGRADATIONS:
        raise ConfigError(f"--degrade {kind!r} is not one of {', '.join(DEGRADATIONS)}")
    if not (0.0 < strength <= 1.0):
        raise ConfigError(f"--strength {strength}: expected a value in (0, 1]")


def _to_signal(pixels: np.ndarray, profile: str, offset: float) -> tuple[np.ndarray, float]:
    """Raw pixels -> (H, W[, C]) float32 signal (0 on glass) and the full-scale signal."""
    if profile == "rgb":
        return 255.0 - pixels.astype(np.float32), 255.0
    return pixels.astype(np.float32) - offset, 65535.0 - offset


def _from_signal(signal: np.ndarray, profile: str, offset: float) -> np.ndarray:
    if profile == "rgb":
        return np.clip(np.rint(255.0 - signal), 0, 255).astype(np.uint8)
    return np.clip(np.rint(signal + offset), 0, 65535).astype(np.uint16)


def _tissue(signal: np.ndarray) -> np.ndarray:
    """(H, W) rough tissue mask: smoothed signal above a tenth of its bright bulk."""
    grey = signal if signal.ndim == 2 else signal.max(axis=2)
    smooth = ndimage.uniform_filter(grey, size=15)
    return smooth > 0.25 * float(np.percentile(smooth, 90))


def degrade(
    pixels: np.ndarray,
    kind: str,
    strength: float,
    rng: np.random.Generator,
    *,
    profile: str = "grey",
    centre: str = "development",
    um_per_px: float = 1.0,
) -> np.ndarray:
    """One degraded copy of ``pixels`` ((H, W) or (H, W, C), same dtype and shape)."""
    check_degradation(kind, strength)
    c = CENTRES[centre] if centre in CENTRES else CENTRES["development"]
    offset = 0.0 if profile == "rgb" else c.offset_adu
    noise = 0.0 if profile == "rgb" else c.read_noise_adu
    signal, full = _to_signal(pixels, profile, offset)
    planar = signal if signal.ndim == 3 else signal[..., None]  # (H, W, C)
    height, width = planar.shape[:2]
    px = 1.0 / um_per_px  # pixels per micrometre
    if kind == "blur":
        sigma = (1.0 + 7.0 * strength) * px
        planar = ndimage.gaussian_filter(planar, sigma=(sigma, sigma, 0))
        planar += rng.normal(0.0, noise, planar.shape).astype(np.float32)
    elif kind == "saturate":
        planar = np.minimum(planar * (1.0 + 6.0 * strength), full)
    elif kind == "faint":
        planar = planar * (1.0 - 0.92 * strength)
        planar += rng.normal(0.0, noise, planar.shape).astype(np.float32)
    elif kind == "bubbles":
        planar = _bubbles(planar, strength, rng, px, noise)
    elif kind == "partial":
        planar = _partial(planar, strength, rng, noise)
    else:
        planar = _seams(planar, strength, rng, px, full)
    out = planar if signal.ndim == 3 else planar[..., 0]
    return _from_signal(out, profile, offset)


def _glass(shape: tuple[int, ...], rng: np.random.Generator, noise: float) -> np.ndarray:
    if not noise:
        return np.zeros(shape, np.float32)
    return rng.normal(0.0, noise, shape).astype(np.float32)


def _bubbles(
    planar: np.ndarray, strength: float, rng: np.random.Generator, px: float, noise: float
) -> np.ndarray:
    height, width = planar.shape[:2]
    tissue = _tissue(planar[..., 0] if planar.shape[2] != 2 else planar[..., 1])
    inside = np.argwhere(ndimage.binary_erosion(tissue, iterations=max(1, int(40 * px))))
    if not inside.size:
        inside = np.argwhere(np.ones((height, width), bool))
    yy, xx = np.mgrid[0:height, 0:width]
    out = planar.copy()
    for _ in range(1 + int(round(5 * strength))):
        cy, cx = inside[rng.integers(len(inside))]
        radius = rng.uniform(60.0, 140.0) * px
        d = np.hypot(yy - cy, xx - cx)
        void = d < radius
        rim = (d >= radius) & (d < radius + 3 * px)  # the meniscus scatters: a faint rim
        out[void] = _glass((int(void.sum()), planar.shape[2]), rng, noise)
        out[rim] *= 1.3
    return out


def _partial(
    planar: np.ndarray, strength: float, rng: np.random.Generator, noise: float
) -> np.ndarray:
    """Glass beyond a straight edge: the face lifts off the window on one side."""
    height, width = planar.shape[:2]
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    along = (xx - width / 2) * np.cos(angle) + (yy - height / 2) * np.sin(angle)
    cut = np.quantile(along, 1.0 - 0.9 * strength)  # keep the share below the cut
    lifted = along > cut
    out = planar.copy()
    out[lifted] = _glass((int(lifted.sum()), planar.shape[2]), rng, noise)
    return out


def _seams(
    planar: np.ndarray, strength: float, rng: np.random.Generator, px: float, full: float
) -> np.ndarray:
    """Mosaic fields 256 um wide, alternating gain, a dark overlap line at each seam."""
    width = planar.shape[1]
    field = max(8, int(round(256 * px)))
    out = planar.copy()
    sign = 1.0
    for x0 in range(0, width, field):
        gain = 1.0 + sign * 0.35 * strength * rng.uniform(0.7, 1.0)
        out[:, x0 : x0 + field] *= gain
        if x0:
            out[:, x0 : x0 + max(1, int(round(3 * px)))] *= 1.0 - 0.6 * strength
        sign = -sign
    return np.minimum(out, full)


def _read_level0(path: Path) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        return tif.series[0].levels[0].asarray()


def degrade_dataset(
    out: str | os.PathLike,
    rows: Sequence,
    kind: str,
    strength: float,
    *,
    seed: int = 0,
    mosaic: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Degrade every image of a dataset just written under ``out``; rewrite its manifest.

    ``rows`` are the dataset's manifest rows (``path``, ``profile``, ``centre``,
    ``um_per_px``); the manifest gains ``degradation`` and ``strength`` columns.
    """
    from ._synth_tiff import write_tiff

    check_degradation(kind, strength)
    out = Path(out)
    for index, row in enumerate(rows):
        path = out / row.path
        with tifffile.TiffFile(path) as tif:
            channels = _channel_names(tif)
        pixels = _read_level0(path)
        rng = np.random.default_rng(np.random.SeedSequence([seed, _SEED_KEY, index]))
        degraded = degrade(
            pixels, kind, strength, rng,
            profile=row.profile, centre=row.centre, um_per_px=row.um_per_px,
        )
        tmp = path.with_name(f".{path.name}.tmp")
        write_tiff(tmp, degraded, um_per_px=row.um_per_px, profile=row.profile,
                   channels=channels, mosaic=mosaic)
        os.replace(tmp, path)
        if progress:
            progress(index + 1, len(rows))
    _add_truth(out / "manifest.csv", kind, strength)


def _channel_names(tif: tifffile.TiffFile) -> list[str]:
    import json

    try:
        meta = json.loads(tif.pages[0].description)
        return list(meta.get("channels", []))
    except (ValueError, TypeError, AttributeError):
        return []


def _add_truth(manifest: Path, kind: str, strength: float) -> None:
    with manifest.open(newline="", encoding="utf-8") as fh:
        table = list(csv.reader(fh))
    header, body = table[0], table[1:]
    tmp = manifest.with_name(".manifest.csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow([*header, "degradation", "strength"])
        for line in body:
            writer.writerow([*line, kind, f"{strength:g}"])
    os.replace(tmp, manifest)
