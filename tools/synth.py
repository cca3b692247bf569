"""Synthetic fluorescence confocal microscopy (FCM) of prostatectomy margins.

The study's images are not public, so marginwatch ships this generator: it writes a
scanner-like export ``OUT/<case>/<name>.tif`` (margin locations in the names and in
sidecars, see :mod:`._synth_cases`) and ``OUT/manifest.csv`` so that training,
evaluation, the daemon and the tests all run without patient data. What the images
model is described in docs/synthetic-data.md; geometry lives in :mod:`._synth_tissue`, the
instrument in :mod:`._acquisition`, TIFF layout in :mod:`._synth_tiff`.

Python API (the daemon's demo scanner and the benchmarks call it)::

    rng = np.random.default_rng(7)
    image = generate_image(rng, "tumour", profile="rgb")   # SynthImage, pixels (H, W, 3)
    write_image(folder / "case" / "x.tif", image)
    rows = write_dataset("export/", images=20, seed=1)      # list[ManifestRow]

Manifest columns: ``path`` (relative to the manifest, POSIX separators), ``label``
(``tumour`` = tumour reaches the inked margin, ``benign`` = it does not), ``patient_id``,
``centre``; then, for information, ``kind``, ``profile``, ``um_per_px``.

Determinism: image ``i`` of a dataset draws from ``SeedSequence([seed, centre, i])`` and
its patient's appearance from ``SeedSequence([seed, centre, patient])``, so the same
arguments give byte-identical files whatever the number of worker processes.
"""

from __future__ import annotations

import csv
import logging
import os
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from marginwatch.engine.errors import ConfigError

from ._acquisition import CENTRES, Centre, acquire, normalised, to_uint16
from ._synth_cases import scan_name, write_sidecars
from ._synth_tissue import Style, draw_tissue

__all__ = [
    "LABELS",
    "MANIFEST_COLUMNS",
    "PROFILES",
    "ManifestRow",
    "SynthImage",
    "centre_names",
    "generate_image",
    "worker_count",
    "write_dataset",
    "write_image",
]

logger = logging.getLogger(__name__)

PROFILES = ("grey", "reflectance+fluorescence", "rgb")
LABELS = ("tumour", "benign")
KINDS_BY_LABEL = {
    "tumour": ("tumour-margin", "tumour-focal"),
    "benign": ("benign", "atrophy", "tumour-inside"),
}
MANIFEST_COLUMNS = ("path", "label", "patient_id", "centre", "kind", "profile", "um_per_px")
DEFAULT_SIZE_PX = 1024  # at 1.0 um/px: one 896 um model field plus context
DEFAULT_MOSAIC_SIZE_PX = 4096
MIN_SIZE_PX, MAX_SIZE_PX = 128, 16384


@dataclass
class SynthImage:
    """One synthetic scan: pixels as the device profile says, and what is in it.

    ``pixels``: grey (H, W) uint16; reflectance+fluorescence (H, W, 2) uint16 with
    channel 0 reflectance and 1 fluorescence; rgb (H, W, 3) uint8 digital H&E.
    ``tumour_mask``: (H, W) bool, pixels inside tumour glands (ground truth for maps).
    """

    pixels: np.ndarray
    um_per_px: float
    profile: str
    channels: list[str]
    label: str
    kind: str
    centre: str
    tumour_mask: np.ndarray


@dataclass(frozen=True)
class ManifestRow:
    path: str
    label: str
    patient_id: str
    centre: str
    kind: str
    profile: str
    um_per_px: float


def worker_count(images: int, workers: int | None) -> int:
    """The processes :func:`write_dataset` uses: ``workers``, else min(4, CPUs); never
    more than there are images."""
    return max(1, min(images, workers or min(4, os.cpu_count() or 1)))


def centre_names() -> tuple[str, ...]:
    return tuple(CENTRES)


def _centre(name: str) -> Centre:
    try:
        return CENTRES[name]
    except KeyError:
        raise ConfigError(f"--centre {name!r} is not one of {', '.join(CENTRES)}") from None


def _check_profile(profile: str) -> None:
    if profile not in PROFILES:
        raise ConfigError(f"--profile {profile!r} is not one of {', '.join(PROFILES)}")


def patient_style(rng: np.random.Generator, centre: str = "development") -> Style:
    """Per-patient appearance (stain uptake, gland size and density) at ``centre``."""
    c = _centre(centre)
    uptake = c.stain * rng.uniform(0.85, 1.15)
    return Style(
        nucleus=uptake,
        cytoplasm=0.34 * uptake * rng.uniform(0.9, 1.1),
        stroma=0.11 * c.stroma_stain * rng.uniform(0.85, 1.15),
        reflectance=c.reflectance * rng.uniform(0.85, 1.15),
        gland_density=rng.uniform(0.7, 1.3),
        gland_scale=rng.uniform(0.8, 1.2),
    )


FOCAL_FRACTION = 0.4  # of tumour images: a few glands at the edge instead of a large focus
INSIDE_FRACTION = 0.06  # of benign images (fields >= 800 um): tumour, but away from the edge
_ATROPHY_SHARE = 0.26 / 0.94  # of the benign images that are not tumour-inside


def _pick_kind(
    rng: np.random.Generator,
    label: str,
    field_um: float,
    focal_fraction: float = FOCAL_FRACTION,
    inside_fraction: float = INSIDE_FRACTION,
) -> str:
    """One draw: the kind of a ``label`` image. The defaults draw what they always drew."""
    if label == "tumour":
        return "tumour-margin" if rng.random() < 1.0 - focal_fraction else "tumour-focal"
    u = rng.random()
    if u < inside_fraction and field_um >= 800:  # tumour present, but away from the inked edge
        return "tumour-inside"
    atrophy_below = inside_fraction + (1.0 - inside_fraction) * _ATROPHY_SHARE
    return "atrophy" if u < atrophy_below else "benign"


def gareau_rgb(fluorescence: np.ndarray, reflectance: np.ndarray) -> np.ndarray:
    """Digital H&E with the engine's own formula, (H, W) x 2 -> (H, W, 3) float32 [0, 1]:
    synthetic RGB exports are what the engine makes of two-channel input."""
    from marginwatch.engine.profiles import gareau_linear

    return gareau_linear(fluorescence, reflectance)  # the engine's H and E constants


def generate_image(
    rng: np.random.Generator,
    label: str,
    *,
    kind: str | None = None,
    centre: str = "development",
    profile: str = "grey",
    size_px: int = DEFAULT_SIZE_PX,
    style: Style | None = None,
    focal_fraction: float = FOCAL_FRACTION,
    inside_fraction: float = INSIDE_FRACTION,
) -> SynthImage:
    """Draw one margin scan. ``label``: "tumour" (tumour at the inked edge) or "benign".

    ``kind`` refines the label (``._synth_tissue.KINDS``): tumour-margin / tumour-focal for
    "tumour"; benign / atrophy / tumour-inside for "benign"; drawn from ``rng`` if None,
    with ``focal_fraction`` of tumour images focal and ``inside_fraction`` of benign ones
    (fields of 800 um or more) tumour-inside.
    """
    if label not in LABELS:
        raise ConfigError(f"label {label!r} is not one of {', '.join(LABELS)}")
    _check_profile(profile)
    c = _centre(centre)
    if not MIN_SIZE_PX <= size_px <= MAX_SIZE_PX:
        raise ConfigError(f"--size-px {size_px} is outside {MIN_SIZE_PX}..{MAX_SIZE_PX}")
    if kind is None:
        kind = _pick_kind(rng, label, size_px * c.um_per_px, focal_fraction, inside_fraction)
    elif kind not in KINDS_BY_LABEL[label]:
        raise ConfigError(f"kind {kind!r} does not fit label {label!r}")
    style = style or patient_style(rng, centre)
    fields = draw_tissue(rng, kind, (size_px, size_px), c.um_per_px, style)
    if profile == "grey":
        (f_adu,), _ = acquire(rng, [fields.fluorescence], [c.photons_at_one], c)
        pixels, channels = to_uint16(f_adu), ["fluorescence"]
    else:
        (f_adu, r_adu), _ = acquire(
            rng,
            [fields.fluorescence, fields.reflectance],
            [c.photons_at_one, c.reflectance_photons_at_one],
            c,
        )
        if profile == "rgb":
            f = normalised(f_adu, c.photons_at_one, c)
            r = normalised(r_adu, c.reflectance_photons_at_one, c)
            pixels = np.rint(gareau_rgb(f, r) * 255).astype(np.uint8)
            channels = ["red", "green", "blue"]
        else:
            pixels = np.stack([to_uint16(r_adu), to_uint16(f_adu)], axis=-1)  # (H, W, 2)
            channels = ["reflectance", "fluorescence"]
    return SynthImage(pixels, c.um_per_px, profile, channels, label, kind, centre, fields.tumour)


def write_image(path: str | os.PathLike, image: SynthImage, *, mosaic: bool = False) -> Path:
    """Write ``image`` as a TIFF at ``path`` (parents created); returns the path."""
    from ._synth_tiff import write_tiff

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_tiff(
        path,
        image.pixels,
        um_per_px=image.um_per_px,
        profile=image.profile,
        channels=image.channels,
        mosaic=mosaic,
    )
    return path


# --- datasets -----------------------------------------------------------------------


def _allocate(
    rng: np.random.Generator, n_images: int, n_tumour: int, n_patients: int
) -> list[tuple[int, str]]:
    """(patient index, label) for each image: every patient has an image; tumour images
    cluster in a subset of patients (positive-margin cases), who also have benign ones."""
    n_benign = n_images - n_tumour
    if n_tumour == 0:
        k = 0
    elif n_benign == 0:
        k = n_patients
    else:
        share = n_tumour / n_images
        k = int(np.clip(round(n_patients * min(0.6, 2.5 * share)), 1, n_patients))
        k = max(k, n_patients - n_benign)  # patients without tumour need a benign image
        k = min(k, n_tumour)
    order = rng.permutation(n_patients)
    positive, others = order[:k], order[k:]

    def spread(count: int, who: np.ndarray, minimum: np.ndarray) -> np.ndarray:
        got = minimum.copy()
        rest = count - int(got.sum())
        if rest > 0 and who.size:
            weights = rng.gamma(2.0, size=who.size)
            got[who] += rng.multinomial(rest, weights / weights.sum())
        return got

    tumour = spread(n_tumour, positive, np.isin(np.arange(n_patients), positive).astype(int))
    benign = spread(
        n_benign, np.arange(n_patients), np.isin(np.arange(n_patients), others).astype(int)
    )
    out = []
    for p in range(n_patients):
        labels = ["tumour"] * tumour[p] + ["benign"] * benign[p]
        out += [(p, labels[i]) for i in rng.permutation(len(labels))]
    return out


def _validate(
    images: int, tumour_fraction: float, patients: int, size_px: int, fractions: dict[str, float]
) -> int:
    if images < 1:
        raise ConfigError(f"--images {images}: expected at least 1")
    for name, value in {"tumour_fraction": tumour_fraction, **fractions}.items():
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"--{name.replace('_', '-')} {value}: expected a value in 0..1")
    if patients < 1:
        raise ConfigError(f"--patients {patients}: expected at least 1")
    if patients > images:
        raise ConfigError(
            f"--patients {patients} exceeds --images {images}: every patient needs an image"
        )
    if not MIN_SIZE_PX <= size_px <= MAX_SIZE_PX:
        raise ConfigError(f"--size-px {size_px} is outside {MIN_SIZE_PX}..{MAX_SIZE_PX}")
    n_tumour = int(round(images * tumour_fraction))
    if n_tumour == images and patients > images:
        raise ConfigError("every image is tumour but there are more patients than images")
    return n_tumour


def _job(args: tuple) -> tuple[str, str]:
    """Worker: draw and write one image; returns its (kind, relative path)."""
    (out, rel, label, centre, profile, size_px, mosaic, seed, centre_key, index, patient,
     fractions) = args
    style = patient_style(
        np.random.default_rng(np.random.SeedSequence([seed, centre_key, 10**6 + patient])), centre
    )
    rng = np.random.default_rng(np.random.SeedSequence([seed, centre_key, index]))
    image = generate_image(
        rng, label, centre=centre, profile=profile, size_px=size_px, style=style, **fractions
    )
    write_image(Path(out) / rel, image, mosaic=mosaic)
    return image.kind, rel


def write_dataset(
    out: str | os.PathLike,
    *,
    images: int | None = None,
    tumour_fraction: float | None = None,
    patients: int | None = None,
    focal_fraction: float = FOCAL_FRACTION,
    inside_fraction: float = INSIDE_FRACTION,
    centre: str = "development",
    profile: str = "grey",
    mosaic: bool = False,
    seed: int = 0,
    size_px: int | None = None,
    workers: int | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[ManifestRow]:
    """Write a synthetic export under ``out`` and ``out/manifest.csv``; returns the rows.

    Unset counts take the centre's defaults (development: 275 images, 37 tumour, 24
    patients; external: 46 images, 23 tumour, 10 patients). ``focal_fraction`` and
    ``inside_fraction`` set the mix of hard kinds (:func:`generate_image`); a training set
    may enrich them, while evaluation sets keep the defaults.
    """
    c = _centre(centre)
    _check_profile(profile)
    images = c.images if images is None else images
    tumour_fraction = c.tumour_fraction if tumour_fraction is None else tumour_fraction
    patients = min(c.patients, images) if patients is None else patients
    size_px = (
        (DEFAULT_MOSAIC_SIZE_PX if mosaic else DEFAULT_SIZE_PX) if size_px is None else size_px
    )
    if seed < 0:
        raise ConfigError(f"--seed {seed}: expected a non-negative integer")
    fractions = {"focal_fraction": focal_fraction, "inside_fraction": inside_fraction}
    n_tumour = _validate(images, tumour_fraction, patients, size_px, fractions)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder")
    manifest = out / "manifest.csv"
    if manifest.exists() and not force:
        raise ConfigError(f"{manifest}: already exists; choose an empty folder or pass --force")
    out.mkdir(parents=True, exist_ok=True)

    centre_key = zlib.crc32(centre.encode())
    plan = _allocate(
        np.random.default_rng(np.random.SeedSequence([seed, centre_key])),
        images,
        n_tumour,
        patients,
    )
    jobs = _plan_jobs(out, plan, c.patient_prefix, patients,
                      (centre, profile, size_px, mosaic, seed, centre_key), fractions)
    workers = worker_count(len(jobs), workers)
    started = time.perf_counter()
    results = _run_jobs(jobs, workers, progress)
    rows = [
        ManifestRow(rel, job[2], rel.split("/")[0], centre, kind, profile, c.um_per_px)
        for job, (kind, rel) in zip(jobs, results, strict=True)
    ]
    write_sidecars(out, [rel for _, rel in results])  # locations, for the daemon
    _write_manifest(manifest, rows)
    logger.info(
        "synth: %d images (%d tumour) from %d patients in %.1f s with %d workers",
        len(rows),
        n_tumour,
        patients,
        time.perf_counter() - started,
        workers,
    )
    return rows


def _plan_jobs(
    out: Path,
    plan: list[tuple[int, str]],
    patient_prefix: str,
    patients: int,
    image_args: tuple,
    fractions: dict[str, float],
) -> list[tuple]:
    """One :func:`_job` argument tuple per image: its case folder, name and label, with
    ``image_args`` (centre, profile, size_px, mosaic, seed, centre_key) shared by all."""
    width = max(2, len(str(patients)))
    jobs, counters = [], {}
    for index, (p, label) in enumerate(plan):
        case = f"{patient_prefix}-{p + 1:0{width}d}"
        counters[case] = counters.get(case, 0) + 1
        rel = scan_name(case, counters[case])  # case folder, scan number, location
        jobs.append(
            (str(out), rel, label, *image_args, index, p, fractions)
        )
    return jobs


def _run_jobs(
    jobs: list[tuple], workers: int, progress: Callable[[int, int], None] | None
) -> list[tuple[str, str]]:
    """Draw and write every image, in order: here, or in ``workers`` spawned processes."""
    results: list[tuple[str, str]] = []
    if workers <= 1:
        for i, job in enumerate(jobs):
            results.append(_job(job))
            if progress:
                progress(i + 1, len(jobs))
        return results
    # spawn, not fork: the parent may hold threads or torch state that fork copies badly
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        for i, result in enumerate(pool.map(_job, jobs, chunksize=1)):
            results.append(result)
            if progress:
                progress(i + 1, len(jobs))
    return results


def _write_manifest(manifest: Path, rows: list[ManifestRow]) -> None:
    """``manifest.csv``, written whole under a temporary name and renamed into place."""
    tmp = manifest.with_name(".manifest.csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(MANIFEST_COLUMNS)
        for r in rows:
            writer.writerow(
                [r.path, r.label, r.patient_id, r.centre, r.kind, r.profile, f"{r.um_per_px:g}"]
            )
    os.replace(tmp, manifest)
