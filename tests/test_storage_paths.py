"""Paths are stored losslessly whatever bytes they hold, and read back exactly."""

from __future__ import annotations

import os

import pytest
from marginwatch.engine.pathnames import display_path
from marginwatch.storage import Store
from marginwatch.storage._paths import decode_path, encode_path
from marginwatch.storage.testing import backend_params, database_url

NAMES = [
    "case1/a.tif",
    "case1/µm-ünïcode.tif",
    os.fsdecode(b"case1/x\xff.tif"),
    os.fsdecode(b"case\xfe/\x80\x81.tif"),
    "case1/two\nlines.tif",
    "case1/100%.tif",
    "case1/%2F.tif",
    "case1/" + "L" * 250 + ".tif",
]


@pytest.mark.parametrize("name", NAMES, ids=ascii)
def test_encoding_round_trips(name: str) -> None:
    stored = encode_path(name)
    stored.encode("utf-8")  # storable as text by every driver
    assert decode_path(stored) == name
    assert os.fsencode(decode_path(stored)) == os.fsencode(name)


def test_ordinary_names_are_stored_as_they_are() -> None:
    for name in ("case1/a.tif", "case1/µm.tif", "case1/100%.tif", "case1/two\nlines.tif"):
        assert encode_path(name) == name


def test_display_is_one_printable_line() -> None:
    assert display_path(os.fsdecode(b"case1/x\xff.tif")) == "case1/x\\xff.tif"
    assert display_path("a\nb\tc\x1b[0m") == "a\\nb\\tc\\x1b[0m"
    assert display_path(b"caf\xc3\xa9/\xff") == "café/\\xff"
    assert display_path("µm ok") == "µm ok"


@pytest.fixture(params=backend_params())
def db_url(request, tmp_path):
    with database_url(request.param, tmp_path) as url:
        yield url


def test_store_keeps_any_bytes(db_url: str) -> None:
    with Store.open(db_url, upgrade=True) as store:
        found = {}
        for i, name in enumerate(NAMES):
            found[name] = store.record_discovery("/export", name, 10 + i, 1000, "test")
            assert found[name] is not None
            # the same version is recognised again (lookup by the stored form)
            assert store.record_discovery("/export", name, 10 + i, 1000, "test") is None
        rows = {row.rel_path for row in store.list_images()}
        assert rows == set(NAMES)
        claimed = [store.claim_job("me:1", 60) for _ in NAMES]
        assert {c.rel_path for c in claimed if c is not None} == set(NAMES)
