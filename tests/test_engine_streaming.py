"""Tiles stream from the file in bounded uint8 chunks; the backend normalises them.

Real TIFFs written by tifffile, the tiny model, the real torch-cpu backend. The file
is watched through /proc/self/fd: open while tiles are read, closed on every path.
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import write_fcm_tiff
from marginwatch.engine import assess, load_model, prepare, select_backend
from marginwatch.engine import reader as reader_module
from marginwatch.engine.assessment import infer_tiles
from marginwatch.engine.config import EngineConfig
from marginwatch.engine.errors import InputError, NoTissueError
from marginwatch.engine.normalisation import normalise_tiles

CONFIG = EngineConfig(heatmap_max_side_px=64, region_read_min_pixels=1000, max_pixels=10**6)


def _open_fds_to(path) -> int:
    target = os.path.realpath(path)
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == target:
                count += 1
        except OSError:
            pass
    return count


@pytest.fixture
def on_disk(monkeypatch):
    """Read files by path (as files over 512 MiB are), not from bytes in memory."""
    monkeypatch.setattr(reader_module, "IN_MEMORY_MAX_BYTES", 0)


def test_chunks_are_uint8_in_plan_order_and_match_tiles(tmp_path, tiny_model_dir):
    model = load_model(tiny_model_dir)
    path = write_fcm_tiff(tmp_path / "a.tif", shape=(200, 260), um_per_px=0.5, tile=(64, 64))
    whole = prepare(path, model, CONFIG).tiles  # materialised, normalised float
    prepared = prepare(path, model, CONFIG)
    chunks = list(prepared.iter_tiles(2))
    assert [c.shape[0] for c in chunks] == [2] * (len(prepared) // 2) + [len(prepared) % 2] * (
        len(prepared) % 2
    )
    assert all(c.dtype == torch.uint8 and c.shape[1:] == (3, 64, 64) for c in chunks)
    joined = torch.cat(chunks)
    assert torch.equal(normalise_tiles(joined, model.card.normalisation), whole)
    assert prepared.timings["read"] > 0 and prepared.timings["preprocess"] > 0
    with pytest.raises(InputError, match="already read"):  # one pass
        next(prepared.iter_tiles(2))


def test_backend_and_model_normalise_uint8_exactly_as_before(tmp_path, tiny_model_dir):
    model = load_model(tiny_model_dir)
    path = write_fcm_tiff(tmp_path / "a.tif", shape=(200, 260), um_per_px=0.5)
    prepared = prepare(path, model, CONFIG)
    normalised = prepared.tiles
    rgb = prepared._rgb  # the uint8 tiles behind it
    backend = select_backend(model, CONFIG)
    from_float, from_uint8 = backend.infer(normalised), backend.infer(rgb)
    assert torch.equal(from_float.logits, from_uint8.logits)
    assert torch.equal(from_float.cams, from_uint8.cams)
    assert torch.equal(model.infer(rgb).logits, model.infer(normalised).logits)
    # streamed assess == materialised tiles through the same backend
    streamed = infer_tiles(backend, prepare(path, model, CONFIG), batch_size=3)
    torch.testing.assert_close(streamed.probabilities, from_float.probabilities)
    result = assess(path, model, CONFIG, backend=backend)
    assert result.probability == pytest.approx(float(from_float.probabilities.max()), abs=1e-6)


def test_file_open_only_while_tiles_are_read(tmp_path, tiny_model_dir, on_disk):
    model = load_model(tiny_model_dir)
    path = write_fcm_tiff(tmp_path / "a.tif", shape=(200, 260), um_per_px=0.5, tile=(64, 64))
    prepared = prepare(path, model, CONFIG)
    assert _open_fds_to(path) == 1  # kept open for the tiles
    chunks = prepared.iter_tiles(2)
    next(chunks)
    assert _open_fds_to(path) == 1
    for _ in chunks:
        pass
    assert _open_fds_to(path) == 0  # closed after the last chunk
    # abandoned part-way: closing the iterator or the image closes the file
    partial = prepare(path, model, CONFIG)
    iterator = partial.iter_tiles(1)
    next(iterator)
    iterator.close()
    assert _open_fds_to(path) == 0
    with prepare(path, model, CONFIG) as unread:
        assert _open_fds_to(path) == 1 and len(unread) > 0
    assert _open_fds_to(path) == 0
    assess(path, model, CONFIG)
    assert _open_fds_to(path) == 0


def test_file_closed_when_prepare_or_a_tile_read_fails(tmp_path, tiny_model_dir, on_disk):
    model = load_model(tiny_model_dir)
    glass = write_fcm_tiff(tmp_path / "glass.tif", tissue=False)
    with pytest.raises(NoTissueError):
        prepare(glass, model, EngineConfig(region_read_min_pixels=1000, max_pixels=10**6))
    assert _open_fds_to(glass) == 0
    path = write_fcm_tiff(tmp_path / "a.tif", shape=(200, 260), um_per_px=0.5, tile=(64, 64))
    prepared = prepare(path, model, CONFIG)
    source = prepared._reader._source

    def broken(*args):
        raise OSError(5, "Input/output error")

    source._read_region = broken  # the share goes away part-way
    with pytest.raises(OSError):
        for _ in prepared.iter_tiles(1):
            pass
    assert _open_fds_to(path) == 0
