"""Synthetic inputs for the benchmark: single-field scans and a streamed mosaic.

Region scans: a few fields are drawn with :func:`marginwatch.tools.synth.generate_image`
(the slow part, seconds each on a busy 2-core machine) and every file written is a
byte-unique variant of one of them (a dihedral flip of the field plus a different
value in one corner pixel), so the daemon never links a file to an earlier
assessment as a duplicate.

The mosaic (default 20,000 x 20,000 px, grey uint16 at the synth centre's pixel size)
is written tile by tile: tifffile pulls 512 x 512 tiles from a generator that composes
them from a small pool of synthetic fields (flipped and transposed so neighbouring
fields differ), one band of fields at a time. The whole mosaic is never in memory
(one band is ~42 MB for 20,000 px). It is cached under the cache folder by its
parameters, so later runs reuse it. No pyramid is written: the engine reads the base
level whenever its pixel size matches the model's, which is the case here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import tifffile

__all__ = ["RegionFactory", "default_cache_dir", "mosaic_path", "write_mosaic"]

TILE = 512
MOSAIC_FORMAT = 1  # bump when the mosaic's content rules change (invalidates the cache)


def default_cache_dir(environ: dict[str, str] | None = None) -> Path:
    """``$MARGINWATCH_BENCH_CACHE``, else ``$XDG_CACHE_HOME/marginwatch/bench`` (~/.cache)."""
    env = os.environ if environ is None else environ
    if env.get("MARGINWATCH_BENCH_CACHE"):
        return Path(env["MARGINWATCH_BENCH_CACHE"])
    base = Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "marginwatch" / "bench"


def _dihedral(array: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/rotations of an (H, W[, C]) array (axes 0 and 1 only)."""
    out = np.rot90(array, k % 4, axes=(0, 1))
    return np.ascontiguousarray(out[:, ::-1] if k >= 4 else out)


class RegionFactory:
    """Byte-unique single-field TIFFs of ``size_px`` x ``size_px`` (see the module docstring)."""

    def __init__(self, size_px: int, *, fields: int = 4, seed: int = 9, profile: str = "grey",
                 accept: Callable[[Path], bool] | None = None, scratch: Path | None = None) -> None:
        """``accept(path)``: keep a drawn field only if it says yes (e.g. it holds tissue)."""
        from .synth import generate_image, write_image

        rng = np.random.default_rng(seed)
        self.images = []
        for attempt in range(4 * fields):
            label = "tumour" if attempt % 2 else "benign"
            image = generate_image(rng, label, size_px=size_px, profile=profile)
            if accept is not None and scratch is not None:
                probe = write_image(scratch / f"probe{attempt}.tif", image)
                keep = accept(probe)
                probe.unlink()
                if not keep:
                    continue
            self.images.append(image)
            if len(self.images) == fields:
                break
        if not self.images:
            raise RuntimeError(f"no synthetic {size_px} px field passed the check in "
                               f"{4 * fields} draws")
        self.size_px = size_px
        self._count = 0

    def write(self, path: Path) -> Path:
        """The next variant, written to ``path`` (parents created)."""
        from .synth import write_image

        n = self._count
        self._count += 1
        base = self.images[n % len(self.images)]
        pixels = _dihedral(base.pixels, (n // len(self.images)) % 8).copy()
        corner = pixels[0, 0] if pixels.ndim == 2 else pixels[0, 0, 0]
        value = (int(corner) + 1 + n) % (np.iinfo(pixels.dtype).max + 1)
        if pixels.ndim == 2:
            pixels[0, 0] = value
        else:
            pixels[0, 0, 0] = value
        variant = type(base)(**{**base.__dict__, "pixels": pixels})
        return write_image(path, variant)


def mosaic_path(cache_dir: Path, size_px: int, fields: int, seed: int, field_px: int) -> Path:
    name = f"mosaic-v{MOSAIC_FORMAT}-{size_px}px-f{fields}x{field_px}-s{seed}.tif"
    return cache_dir / name


def _field_pool(fields: int, field_px: int, seed: int) -> tuple[list[np.ndarray], float]:
    from .synth import generate_image

    rng = np.random.default_rng(seed)
    pool, um = [], 1.0
    for i in range(fields):
        image = generate_image(rng, "tumour" if i % 3 == 0 else "benign", size_px=field_px,
                               profile="grey")
        pool.append(image.pixels)
        um = image.um_per_px
    return pool, um


def _tiles(size_px: int, pool: list[np.ndarray], field_px: int, seed: int) -> Iterator[np.ndarray]:
    """512 x 512 tiles in TIFF order (row of tiles by row of tiles), built band by band."""
    rng = np.random.default_rng(seed + 1)
    across = -(-size_px // field_px)
    tiles_across = -(-size_px // TILE)
    band: np.ndarray | None = None
    band_top = -field_px
    for ty in range(-(-size_px // TILE)):
        y = ty * TILE
        if band is None or y + TILE > band_top + field_px:
            # the next band starts at this tile row; fields cover tiles_across * TILE columns
            parts = [_dihedral(pool[int(rng.integers(len(pool)))], int(rng.integers(8)))
                     for _ in range(across)]
            band = np.concatenate(parts, axis=1)
            band_top = y
            if band.shape[1] < tiles_across * TILE:
                pad = tiles_across * TILE - band.shape[1]
                band = np.pad(band, ((0, 0), (0, pad)), mode="reflect")
        rows = band[y - band_top : y - band_top + TILE]
        if rows.shape[0] < TILE:
            rows = np.pad(rows, ((0, TILE - rows.shape[0]), (0, 0)), mode="reflect")
        for tx in range(tiles_across):
            yield np.ascontiguousarray(rows[:, tx * TILE : (tx + 1) * TILE])


def write_mosaic(cache_dir: Path, size_px: int, *, fields: int = 6, seed: int = 3,
                 field_px: int = 1024) -> tuple[Path, bool]:
    """The cached mosaic for these parameters, written if missing; ``(path, was_cached)``.

    ``field_px`` must be a multiple of the 512 px TIFF tile so bands align with tile rows.
    """
    if field_px % TILE:
        raise ValueError(f"field_px={field_px} must be a multiple of {TILE}")
    path = mosaic_path(cache_dir, size_px, fields, seed, field_px)
    if path.exists():
        return path, True
    cache_dir.mkdir(parents=True, exist_ok=True)
    pool, um = _field_pool(fields, field_px, seed)
    ppcm = 1e4 / um
    temp = path.with_name(f".{path.name}.{os.getpid()}.part")
    description = json.dumps({"axes": "YX", "um_per_px": um, "profile": "grey",
                              "channels": ["fluorescence"], "synthetic": True})
    try:
        with tifffile.TiffWriter(temp, bigtiff=size_px * size_px * 2 > 2**31) as tif:
            tif.write(
                _tiles(size_px, pool, field_px, seed),
                shape=(size_px, size_px),
                dtype=pool[0].dtype,
                tile=(TILE, TILE),
                photometric="minisblack",
                compression="zlib",
                compressionargs={"level": 1},
                resolution=(ppcm, ppcm),
                resolutionunit="CENTIMETER",
                description=description,
                metadata=None,
                software="marginwatch bench",
            )
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path, False
