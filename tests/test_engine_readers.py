"""engine.reader over real files: TIFF variants written by tifffile, PNG/JPEG/BMP by Pillow."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import tifffile
from conftest import write_fcm_tiff
from marginwatch.engine.errors import (
    ImageTooLargeError,
    UnreadableImageError,
    UnsupportedImageError,
)
from marginwatch.engine.reader import open_image
from PIL import Image

LIMITS = dict(max_pixels=30_000 * 30_000, max_channels=4, region_read_min_pixels=4096 * 4096)


def _read(path, **overrides):  # noqa: ANN001, ANN202
    with open_image(path, **{**LIMITS, **overrides}) as source:
        return source.info, source.read_all()


TIFF_VARIANTS = {
    "uint8-stripped": dict(dtype="uint8"),
    "uint16-tiled": dict(dtype="uint16", tile=(64, 64)),
    "float32": dict(dtype="float32"),
    "bigtiff": dict(dtype="uint16", bigtiff=True),
    "deflate": dict(dtype="uint16", compression="zlib", tile=(64, 64)),
    "lzw": dict(dtype="uint8", compression="lzw", rowsperstrip=16),
    "zstd": dict(dtype="uint16", compression="zstd", tile=(32, 32)),
    "two-channel-interleaved": dict(dtype="uint16", channels=2),
    "two-channel-planar": dict(dtype="uint16", channels=2, planarconfig="separate"),
    "rgb-interleaved": dict(dtype="uint8", channels=3),
    "rgb-planar-tiled": dict(dtype="uint8", channels=3, planarconfig="separate", tile=(64, 64)),
    "four-channel": dict(dtype="uint8", channels=4, photometric="minisblack"),
}


@pytest.mark.parametrize("name", sorted(TIFF_VARIANTS))
def test_tiff_variants_decode_to_hwc_and_regions_match(tmp_path, name):
    options = dict(TIFF_VARIANTS[name])
    channels = options.get("channels", 1)
    path = write_fcm_tiff(tmp_path / f"{name}.tif", shape=(150, 170), **options)
    expected = tifffile.imread(path)
    if options.get("planarconfig") == "separate":
        expected = np.moveaxis(expected, 0, -1)  # stored (C, H, W) -> (H, W, C)
    expected = expected.reshape(150, 170, channels)
    info, whole = _read(path)
    assert info.shape == (150, 170, channels)
    assert info.dtype == str(expected.dtype)
    assert not info.region_reads
    np.testing.assert_array_equal(whole, expected)
    # the same file read region by region (threshold below its size) gives the same pixels
    with open_image(path, **{**LIMITS, "region_read_min_pixels": 100}) as source:
        assert source.info.region_reads
        np.testing.assert_array_equal(
            source.read_region(10, 20, 140, 165), expected[10:140, 20:165]
        )
        np.testing.assert_array_equal(source.read_all(), expected)


def test_jpeg_compressed_tiff(tmp_path):
    path = write_fcm_tiff(tmp_path / "jpeg.tif", dtype="uint8", compression="jpeg", tile=(64, 64))
    info, whole = _read(path)
    assert info.shape == (192, 256, 1)
    assert np.abs(whole[..., 0].astype(int) - tifffile.imread(path).astype(int)).max() == 0
    with open_image(path, **{**LIMITS, "region_read_min_pixels": 100}) as source:
        np.testing.assert_array_equal(source.read_all(), whole)


@pytest.mark.parametrize(
    "fmt,mode,dtype,channels",
    [
        ("PNG", "L", "uint8", 1),
        ("PNG", "I;16", "uint16", 1),
        ("PNG", "RGB", "uint8", 3),
        ("PNG", "RGBA", "uint8", 4),
        ("JPEG", "L", "uint8", 1),
        ("JPEG", "RGB", "uint8", 3),
        ("BMP", "RGB", "uint8", 3),
        ("PNG", "P", "uint8", 3),
    ],
)
def test_pillow_formats(tmp_path, fmt, mode, dtype, channels):
    rng = np.random.default_rng(1)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (40, 50), dtype=np.uint16))
    elif mode == "P":
        image = Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).convert("P")
    else:
        bands = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
        array = rng.integers(0, 255, (40, 50, bands), dtype=np.uint8)
        image = Image.fromarray(array[..., 0] if bands == 1 else array, mode=None)
    path = tmp_path / f"image.{fmt.lower()}"
    image.save(path, format=fmt)
    info, array = _read(path)
    assert (info.format, info.shape, info.dtype) == (fmt, (40, 50, channels), dtype)
    assert array.shape == (40, 50, channels)
    assert info.um_per_px is None  # Pillow formats carry no trusted pixel size
    assert len(info.sha256) == 64


def test_pixel_size_from_resolution_tags_cm_and_inch(tmp_path):
    path = write_fcm_tiff(tmp_path / "cm.tif", um_per_px=0.5)
    assert _read(path)[0].um_per_px == pytest.approx(0.5)
    assert _read(path)[0].um_per_px_source == "tiff-resolution"
    inch = tmp_path / "inch.tif"
    tifffile.imwrite(
        inch,
        np.zeros((32, 32), np.uint8),
        resolution=(25_400 / 2.0, 25_400 / 2.0),
        resolutionunit="INCH",
    )
    assert _read(inch)[0].um_per_px == pytest.approx(2.0)


def test_screen_dpi_and_unitless_resolution_are_ignored(tmp_path):
    dpi = tmp_path / "dpi.tif"
    tifffile.imwrite(dpi, np.zeros((32, 32), np.uint8), resolution=(72, 72), resolutionunit="INCH")
    info = _read(dpi)[0]
    assert info.um_per_px is None and "ignored" in info.notes[0]
    bare = tmp_path / "bare.tif"
    tifffile.imwrite(bare, np.zeros((32, 32), np.uint8))
    assert _read(bare)[0].um_per_px is None


def test_imagej_micron_unit(tmp_path):
    path = tmp_path / "imagej.tif"
    tifffile.imwrite(
        path,
        np.zeros((32, 32), np.uint8),
        imagej=True,
        resolution=(4.0, 4.0),
        metadata={"unit": "um"},
    )
    info = _read(path)[0]
    assert (info.um_per_px, info.um_per_px_source) == (pytest.approx(0.25), "tiff-resolution")


def test_ome_physical_size_and_channels(tmp_path):
    path = tmp_path / "two.ome.tif"
    data = np.arange(2 * 40 * 30, dtype=np.uint16).reshape(2, 40, 30)
    tifffile.imwrite(
        path,
        data,
        ome=True,
        metadata={"axes": "CYX", "PhysicalSizeX": 0.8, "PhysicalSizeXUnit": "µm"},
    )
    info, array = _read(path)
    assert info.format == "OME-TIFF"
    assert (info.um_per_px, info.um_per_px_source) == (pytest.approx(0.8), "ome")
    assert info.shape == (40, 30, 2)
    np.testing.assert_array_equal(array, np.moveaxis(data, 0, -1))
    with open_image(path, **{**LIMITS, "region_read_min_pixels": 100}) as source:
        np.testing.assert_array_equal(
            source.read_region(5, 5, 25, 20), np.moveaxis(data, 0, -1)[5:25, 5:20]
        )


def _pyramid(path, base, um, ome=False):  # noqa: ANN001, ANN202
    levels = [base, base[::2, ::2], base[::4, ::4]]
    metadata = {"axes": "YX", "PhysicalSizeX": um, "PhysicalSizeXUnit": "µm"} if ome else None
    with tifffile.TiffWriter(path, bigtiff=True, ome=ome) as tif:
        tif.write(
            levels[0],
            tile=(64, 64),
            subifds=2,
            metadata=metadata,
            resolution=(1e4 / um, 1e4 / um),
            resolutionunit="CENTIMETER",
        )
        for level in levels[1:]:
            tif.write(level, tile=(64, 64), subfiletype=1)
    return levels


@pytest.mark.parametrize("ome", [False, True])
@pytest.mark.parametrize(
    "target,level", [(0.5, 0), (1.0, 1), (1.9, 1), (2.0, 2), (8.0, 2), (0.1, 0)]
)
def test_pyramid_level_closest_to_model_pixel_size(tmp_path, ome, target, level):
    base = np.random.default_rng(2).integers(0, 255, (256, 320), dtype=np.uint8)
    levels = _pyramid(tmp_path / "pyr.tif", base, 0.5, ome=ome)
    with open_image(tmp_path / "pyr.tif", **LIMITS, target_um_per_px=target) as source:
        info = source.info
        assert (info.level, info.levels) == (level, 3)
        assert info.um_per_px == pytest.approx(0.5 * 2**level)
        assert info.base_shape == (256, 320, 1)
        np.testing.assert_array_equal(source.read_all()[..., 0], levels[level])


def _header_only_tiff(path, width, height, *, bits=8, samples=1):  # noqa: ANN001, ANN202
    """A classic TIFF whose tags declare ``width x height`` with one tiny strip of data."""
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, bits),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 8),
        (277, 3, 1, samples),
        (278, 4, 1, height),
        (279, 4, 1, 16),
    ]
    ifd = (
        struct.pack("<H", len(entries))
        + b"".join(
            struct.pack("<HHII", tag, kind, count, value)
            if kind == 4
            else struct.pack("<HHIHH", tag, kind, count, value, 0)
            for tag, kind, count, value in entries
        )
        + struct.pack("<I", 0)
    )
    path.write_bytes(b"II*\x00" + struct.pack("<I", 24) + b"\x00" * 16 + ifd)
    return path


def test_max_pixels_refused_from_the_header_without_decoding(tmp_path, monkeypatch):
    path = _header_only_tiff(tmp_path / "huge.tif", 200_000, 200_000)
    assert path.stat().st_size < 200

    def no_decoding(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", no_decoding)
    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", no_decoding)
    with pytest.raises(ImageTooLargeError, match=r"200000x200000 .* exceeds engine.max_pixels"):
        open_image(path, **LIMITS)


def test_max_pixels_refused_for_pillow_and_small_limits(tmp_path):
    path = tmp_path / "big.png"
    Image.new("L", (300, 200)).save(path)
    with pytest.raises(ImageTooLargeError, match="300x200"):
        open_image(path, **{**LIMITS, "max_pixels": 1000, "region_read_min_pixels": 100})


def test_pillow_decompression_bomb_is_too_large(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("L", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow's own guard trips first
    with pytest.raises(ImageTooLargeError):
        open_image(path, **LIMITS)


def test_bad_inputs_name_the_file_and_what_was_found(tmp_path):
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    with pytest.raises(UnreadableImageError, match=r"empty.tif: is empty \(0 bytes\)"):
        open_image(empty, **LIMITS)
    with pytest.raises(UnreadableImageError, match="is a directory"):
        open_image(tmp_path, **LIMITS)
    with pytest.raises(UnreadableImageError, match="no such file"):
        open_image(tmp_path / "missing.tif", **LIMITS)
    noise = tmp_path / "noise.tif"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(UnreadableImageError, match="not a TIFF, PNG, JPEG or BMP"):
        open_image(noise, **LIMITS)
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    with pytest.raises(UnreadableImageError, match="not a TIFF"):
        open_image(text, **LIMITS)


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_truncated_tiff_is_unreadable(tmp_path, compression, cut):
    path = write_fcm_tiff(tmp_path / "whole.tif", compression=compression, rowsperstrip=32)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.tif"
    # tifffile writes pixel data before the IFD: cutting keeps a header pointing past the end
    truncated.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(UnreadableImageError, match="truncated.tif: TIFF"):
        _read(truncated)
    with pytest.raises(UnreadableImageError, match="truncated.tif"):
        _read(truncated, region_read_min_pixels=100)


def test_truncated_png_is_unreadable(tmp_path):
    path = tmp_path / "whole.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
    cut = tmp_path / "cut.png"
    cut.write_bytes(path.read_bytes()[:300])
    with pytest.raises(UnreadableImageError, match="cut.png: PNG"):
        _read(cut)


def test_unsupported_dtype_channels_and_stacks(tmp_path):
    path = tmp_path / "int32.tif"
    tifffile.imwrite(path, np.zeros((16, 16), np.int32))
    with pytest.raises(UnsupportedImageError, match="pixel type int32; expected one of uint8"):
        open_image(path, **LIMITS)
    five = tmp_path / "five.tif"
    tifffile.imwrite(
        five, np.zeros((16, 16, 5), np.uint8), photometric="minisblack", planarconfig="contig"
    )
    with pytest.raises(UnsupportedImageError, match="5 channels; expected 1 to 4"):
        open_image(five, **LIMITS)
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((3, 2, 16, 16), np.uint8), metadata={"axes": "ZCYX"})
    with pytest.raises(UnsupportedImageError, match="expected a single 2-D image"):
        open_image(stack, **LIMITS)


def test_sha256_is_of_the_file_bytes(tmp_path):
    import hashlib

    path = write_fcm_tiff(tmp_path / "a.tif")
    with open_image(path, **LIMITS) as source:
        assert source.info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert source.info.file_size == path.stat().st_size
