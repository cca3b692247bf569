"""Pre-model checks: hostile headers are refused before any byte is hashed; NaN/inf,
constant and out-of-range pixels are not assessable (never a result)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import write_fcm_tiff
from marginwatch.engine.config import EngineConfig
from marginwatch.engine.errors import ImageTooLargeError, InvalidPixelsError, UnreadableImageError
from marginwatch.engine.model import load_model
from marginwatch.engine.reader import open_image

MARGINWATCH = str(Path(sys.executable).with_name("marginwatch"))
LIMITS = dict(max_pixels=30_000 * 30_000, max_channels=4, region_read_min_pixels=4096 * 4096)


def sparse_huge_tiff(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A classic TIFF declaring width x height RGB uint8 in one strip, the file sparse at its
    full declared size (30 GB of holes): reading it all would take a long time."""
    strip = 4096
    count = width * height * 3
    entries = [
        (256, 4, 1, struct.pack("<I", width)),
        (257, 4, 1, struct.pack("<I", height)),
        (258, 3, 3, struct.pack("<I", 200)),  # BitsPerSample 8,8,8 at offset 200
        (259, 3, 1, struct.pack("<HH", 1, 0)),
        (262, 3, 1, struct.pack("<HH", 2, 0)),  # RGB
        (273, 4, 1, struct.pack("<I", strip)),
        (277, 3, 1, struct.pack("<HH", 3, 0)),
        (278, 4, 1, struct.pack("<I", height)),
        (279, 4, 1, struct.pack("<I", count & 0xFFFFFFFF)),
        (284, 3, 1, struct.pack("<HH", 1, 0)),
    ]
    body = bytearray(b"II*\x00" + struct.pack("<I", 8))
    body += struct.pack("<H", len(entries))
    for tag, typ, n, value in entries:
        body += struct.pack("<HHI", tag, typ, n) + value
    body += struct.pack("<I", 0)
    body += b"\x00" * (200 - len(body)) + struct.pack("<HHH", 8, 8, 8)
    path.write_bytes(bytes(body))
    os.truncate(path, strip + count)
    return path


def _bytes_read() -> int:
    with open("/proc/self/io") as fh:
        return int(next(line for line in fh if line.startswith("rchar:")).split()[1])


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs /proc/self/io (Linux)")
def test_hostile_header_refused_before_hashing(tmp_path: Path) -> None:
    path = sparse_huge_tiff(tmp_path / "huge.tif")
    assert path.stat().st_size > 30 * 10**9
    before = _bytes_read()
    with pytest.raises(ImageTooLargeError, match=r"100000x100000 .* exceeds engine.max_pixels"):
        open_image(path, **LIMITS)
    # the header alone was read, not the 30 GB the file claims to hold
    assert _bytes_read() - before < 4 * 1024 * 1024


def test_fifo_is_not_reported_as_empty(tmp_path: Path) -> None:
    fifo = tmp_path / "scan.tif"
    os.mkfifo(fifo)
    with pytest.raises(UnreadableImageError, match=r"is a FIFO \(named pipe\), not a regular file"):
        open_image(fifo, **LIMITS)  # and never blocks opening it


def _float_tiff(path: Path, data: np.ndarray) -> Path:
    tifffile.imwrite(path, data.astype(np.float32), resolution=(1e4, 1e4),
                     resolutionunit="CENTIMETER")
    return path


def _prepare(path: Path, model_dir: Path):  # noqa: ANN202
    from marginwatch.engine.assessment import prepare

    return prepare(path, load_model(model_dir), EngineConfig())


def _real(seed: int = 0) -> np.ndarray:
    import io

    buf = io.BytesIO()
    write_fcm_tiff(buf, shape=(128, 128), dtype="float32", seed=seed)
    return tifffile.imread(io.BytesIO(buf.getvalue()))


@pytest.mark.parametrize(
    ("name", "make", "match"),
    [
        ("all-nan", lambda: np.full((128, 128), np.nan), "NaN"),
        ("one-inf", lambda: np.where(np.arange(128 * 128).reshape(128, 128) == 5000, np.inf,
                                     _real()), "infinity"),
        ("one-nan", lambda: np.where(np.arange(128 * 128).reshape(128, 128) == 77, np.nan,
                                     _real()), "NaN"),
        ("constant", lambda: np.full((128, 128), 0.4), "same value"),
        ("raw-counts", lambda: _real() * 4095.0, "expected intensities in 0 to 1"),
        ("negative", lambda: _real() - 3.0, "expected intensities in 0 to 1"),
    ],
)
def test_pixels_the_model_must_not_see(tmp_path: Path, tiny_model_dir: Path, name, make, match):
    path = _float_tiff(tmp_path / f"{name}.tif", make())
    with pytest.raises(InvalidPixelsError, match=match):
        _prepare(path, tiny_model_dir)


def test_constant_integer_image(tmp_path: Path, tiny_model_dir: Path) -> None:
    path = tmp_path / "saturated.tif"
    tifffile.imwrite(path, np.full((128, 128), 65535, np.uint16))
    with pytest.raises(InvalidPixelsError, match="same value"):
        _prepare(path, tiny_model_dir)


def test_ordinary_float_image_is_still_assessed(tmp_path: Path, tiny_model_dir: Path) -> None:
    prepared = _prepare(_float_tiff(tmp_path / "ok.tif", _real()), tiny_model_dir)
    with prepared:
        assert len(prepared.boxes) > 0


def test_predict_says_not_assessed_for_nan(tmp_path: Path, tiny_model_dir: Path) -> None:
    path = _float_tiff(tmp_path / "nan.tif", np.full((128, 128), np.nan))
    out = subprocess.run([MARGINWATCH, "predict", "--model", str(tiny_model_dir), str(path)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"{path}: NOT ASSESSED: pixel values include NaN" in out.stdout
    assert "p=" not in out.stdout
