"""Fuzz target for the image readers (atheris, coverage-guided): ``make fuzz``.

Not part of the test suite (pytest does not collect it; it needs ``atheris``). Each input
is written to a file and opened as the daemon opens an export: ``open_image`` with the
header limits, then the overview and the pixel checks. An ``InputError`` (unreadable,
too large, unsupported, invalid pixels) is the expected answer to a hostile file; any
other exception, a hang past ``-timeout`` or memory past ``-rss_limit_mb`` is a bug, and
libFuzzer saves the input (``-artifact_prefix``). Regression copies of such inputs live
in ``tests/data/fuzz/`` and ``tests/test_fuzz_regressions.py`` replays them.

    python tests/fuzz/fuzz_readers.py -max_total_time=300 CORPUS_DIR

Seeds (small valid TIFF, BigTIFF, tiled/compressed TIFF, PNG, JPEG, BMP) are written
into an empty corpus folder given as the first directory argument.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from pathlib import Path

import atheris
import numpy as np  # imported before the block below, so that it is not instrumented
from PIL import Image

with atheris.instrument_imports(include=["tifffile", "marginwatch"]):
    import tifffile
    from marginwatch.engine import _limits, _pillow, _tiff, reader  # noqa: F401

from marginwatch.engine.errors import InputError

LIMITS = dict(max_pixels=2048 * 2048, max_channels=4, region_read_min_pixels=512 * 512)
_FILE = Path(tempfile.mkdtemp(prefix="mw-fuzz-")) / "input.img"


def check(data: bytes) -> None:
    """Open ``data`` as an export would be opened; raise on anything but InputError."""
    _FILE.write_bytes(data)
    try:
        with reader.open_image(_FILE, **LIMITS) as source:
            height, width, _ = source.info.shape
            factor = max(1, max(height, width) // 64)
            overview = source.overview(factor)
            _limits.check_pixels(_FILE, overview, source.info.dtype)
            source.read_region(0, 0, min(height, 32), min(width, 32))
    except InputError:
        pass


def _one(data: bytes) -> None:
    check(data)


def seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    grey = (rng.random((24, 32)) * 255).astype(np.uint8)
    out: dict[str, bytes] = {}
    for name, kwargs, array in [
        ("grey.tif", {}, grey),
        ("u16-tiled-zlib.tif", {"tile": (16, 16), "compression": "zlib"}, grey.astype(np.uint16)),
        ("float.tif", {}, grey.astype(np.float32) / 255),
        ("big.tif", {"bigtiff": True}, grey),
        ("rgb-planar.tif", {"planarconfig": "separate", "photometric": "rgb"},
         np.stack([grey] * 3)),
        ("lzw-strips.tif", {"compression": "lzw", "rowsperstrip": 4}, grey),
    ]:
        buf = io.BytesIO()
        tifffile.imwrite(buf, array, **kwargs)
        out[name] = buf.getvalue()
    for fmt in ("PNG", "JPEG", "BMP"):
        buf = io.BytesIO()
        Image.fromarray(grey).save(buf, format=fmt)
        out[f"grey.{fmt.lower()}"] = buf.getvalue()
    return out


def main(argv: list[str]) -> None:
    corpus = next((Path(a) for a in argv[1:] if not a.startswith("-")), None)
    if corpus is not None and not corpus.is_file():  # a file given alone: replay it
        corpus.mkdir(parents=True, exist_ok=True)
        if not any(corpus.iterdir()):
            for name, data in seeds().items():
                (corpus / name).write_bytes(data)
    atheris.Setup(argv, _one)
    atheris.Fuzz()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(sys.argv)
