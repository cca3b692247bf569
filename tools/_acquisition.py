"""What the scanner does to the tissue's expected signal: optics, scan strips, noise.

Input: noise-free expected fluorescence/reflectance, each (H, W) float32 ~[0, 1]
(:mod:`._synth_tissue`). Output: detector counts, each (H, W) float32 in ADU, before
quantisation. Modelled, in the order light meets the instrument:

1. the point-spread function (Gaussian, sigma ~0.6 px);
2. in some images, focus fall-off (the specimen surface tilts out of the focal plane
   towards one corner: progressively blurred and dimmer) and motion blur (the stage
   moved during some strips);
3. the mosaic is scanned in vertical strips: each strip has its own illumination
   (cos-like vignetting across the strip, a gain, and a slow drift along it);
4. stitching seams: each strip is displaced by a pixel or two against its neighbour,
   and the overlap leaves a faint line;
5. Poisson shot noise on the photon counts, Gaussian read noise, gain and offset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ._synth_tissue import smooth_noise

__all__ = ["CENTRES", "Artefacts", "Centre", "acquire", "normalised", "to_uint16"]


@dataclass(frozen=True)
class Centre:
    """A scanning site: its instrument and its staining protocol."""

    name: str
    patient_prefix: str
    um_per_px: float
    photons_at_one: float  # photons collected for a fully bright fluorescence pixel
    reflectance_photons_at_one: float
    gain_adu: float  # ADU per photon
    offset_adu: float
    read_noise_adu: float
    strip_um: float  # width of one scan strip
    vignetting: float  # relative illumination loss at a strip's edge
    stain: float  # acridine-orange uptake: scales nuclear and cytoplasmic signal
    stroma_stain: float
    reflectance: float
    blur_px: float  # PSF sigma
    images: int  # default image count
    tumour_fraction: float
    patients: int


CENTRES: dict[str, Centre] = {
    # the development centre mirrors the study: 275 images, 37 positive, 24 patients
    "development": Centre(
        "development",
        "dev",
        1.0,
        900.0,
        500.0,
        40.0,
        200.0,
        3.0,
        512.0,
        0.22,
        1.0,
        1.0,
        1.0,
        0.6,
        275,
        37 / 275,
        24,
    ),
    # the external centre: weaker stain, noisier detector, coarser pixels, other strips;
    # 23 of 46 positive (the paper's external sens 91.3 % = 21/23, spec 73.9 % = 17/23)
    "external": Centre(
        "external",
        "ext",
        1.2,
        380.0,
        320.0,
        70.0,
        400.0,
        6.0,
        400.0,
        0.32,
        0.78,
        1.3,
        0.8,
        0.75,
        46,
        0.5,
        10,
    ),
}


@dataclass(frozen=True)
class Artefacts:
    """Which acquisition defects one image has."""

    focus_falloff: bool
    motion_strips: tuple[int, ...]


def _strip_edges(width: int, strip_px: int) -> list[tuple[int, int]]:
    edges = list(range(0, width, strip_px)) + [width]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def acquire(
    rng: np.random.Generator, channels: list[np.ndarray], photons: list[float], centre: Centre
) -> tuple[list[np.ndarray], Artefacts]:
    """Expected signals -> detector counts in ADU; one (H, W) float32 per channel.

    All channels share the geometry (blur, strips, seams) but get their own noise.
    """
    h, w = channels[0].shape
    strips = _strip_edges(w, max(32, int(round(centre.strip_um / centre.um_per_px))))
    focus = rng.random() < 0.2
    motion = tuple(i for i in range(len(strips)) if rng.random() < 0.12)

    # shared geometry: per-strip gains, vignetting, drift, seam offsets
    x = np.arange(w, dtype=np.float32)
    illum = np.ones((h, w), np.float32)
    drift = smooth_noise(rng, (h, len(strips)), max(8.0, h / 3))
    shifts = []
    for i, (a, b) in enumerate(strips):
        centre_x = (a + b - 1) / 2
        half = max(1.0, (b - a) / 2)
        profile = 1 - centre.vignetting * ((x[a:b] - centre_x) / half) ** 2
        gain = rng.normal(1.0, 0.06)
        illum[:, a:b] = gain * profile[None, :] * (1 + 0.04 * drift[:, i : i + 1])
        shifts.append(int(rng.integers(-2, 3)) if i else 0)
    if focus:  # surface tilting away from the focal plane towards one corner
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        cy, cx = rng.choice([0, h - 1]), rng.choice([0, w - 1])
        d = np.hypot(yy - cy, xx - cx) / np.hypot(h, w)
        defocus = np.clip((rng.uniform(0.35, 0.6) - d) / 0.35, 0, 1)
    motion_len = int(rng.integers(4, 12))
    motion_axis = int(rng.integers(2))

    out = []
    for signal, ph in zip(channels, photons, strict=True):
        img = ndimage.gaussian_filter(signal, centre.blur_px)
        if focus:
            far = ndimage.gaussian_filter(img, rng.uniform(2.5, 5.0))
            img = (1 - defocus) * img + defocus * far * 0.75
        for i in motion:
            a, b = strips[i]
            img[:, a:b] = ndimage.uniform_filter1d(img[:, a:b], motion_len, axis=motion_axis)
        img = img * illum
        for (a, b), s in zip(strips, shifts, strict=True):
            if s:
                img[:, a:b] = np.roll(img[:, a:b], s, axis=0)
            if a:  # overlap blending leaves a faint line at the seam
                img[:, a] *= 1.06
        counts = rng.poisson(np.clip(img, 0, None) * ph).astype(np.float32)
        adu = counts * centre.gain_adu + centre.offset_adu
        adu += rng.normal(0.0, centre.read_noise_adu, adu.shape).astype(np.float32)
        out.append(adu)
    return out, Artefacts(focus, motion)


def to_uint16(adu: np.ndarray) -> np.ndarray:
    """ADU -> uint16 with saturation, (H, W)."""
    return np.clip(np.rint(adu), 0, 65535).astype(np.uint16)


def normalised(adu: np.ndarray, photons: float, centre: Centre) -> np.ndarray:
    """ADU back to the ~[0, 1] signal scale the scanner's digital staining uses."""
    return (adu - centre.offset_adu) / (photons * centre.gain_adu)
