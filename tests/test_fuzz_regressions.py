"""Inputs the reader fuzzer (tests/fuzz/fuzz_readers.py) found crashing, replayed.

Each must end as the daemon expects of any hostile file: opened, or an ``InputError``
(unreadable, too large, unsupported, invalid pixels) with a one-line reason; never
another exception.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from marginwatch.engine._limits import check_pixels
from marginwatch.engine.errors import InputError
from marginwatch.engine.reader import open_image

FOUND = sorted((Path(__file__).parent / "data" / "fuzz").iterdir())
LIMITS = dict(max_pixels=2048 * 2048, max_channels=4, region_read_min_pixels=512 * 512)


def test_there_are_regression_inputs() -> None:
    assert FOUND


@pytest.mark.parametrize("path", FOUND, ids=lambda p: p.name)
def test_fuzzer_finding_is_an_input_error_or_opens(path: Path, caplog) -> None:  # noqa: ANN001
    caplog.set_level(logging.DEBUG)
    try:
        with open_image(path, **LIMITS) as source:
            height, width, _ = source.info.shape
            overview = source.overview(max(1, max(height, width) // 64))
            check_pixels(path, overview, source.info.dtype)
    except InputError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
    # no flood of library log lines (log-flood.tif once made tifffile write 224 MB)
    assert len(caplog.records) < 20, len(caplog.records)
