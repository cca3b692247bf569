"""Paths are stored losslessly whatever bytes they hold, and read back exactly."""

from __future__ import annotations

import os

import pytest
from marginwatch.engine.pathnames import display_path
from marginwatch.storage import Store
from marginwatch.storage._paths import decode_path, encode_path

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


def test_paths_of_any_length_are_recorded(db_url: str) -> None:
    """A path near PATH_MAX (4096 bytes; non-UTF-8, so three times that percent-encoded)
    gets its row on SQLite and PostgreSQL: it was refused by VARCHAR(1000) and, on
    PostgreSQL, by the B-tree entry limit (2704 bytes) of the unique constraint."""
    deep = "/".join(["d" * 200] * 19) + "/scan.tif"  # 3 8xx bytes of UTF-8
    odd = os.fsdecode(b"/".join([b"\xff" * 200] * 19) + b"/scan.tif")  # 11 5xx encoded
    assert len(deep.encode()) < 4096 and len(encode_path(odd)) > 11_000
    with Store.open(db_url, upgrade=True) as store:
        for name in (deep, odd):
            assert store.record_discovery("/export", name, 10, 1000, "test") is not None
            assert store.record_discovery("/export", name, 10, 1000, "test") is None
            # a second version of the same long path is linked to the first
            assert store.record_discovery("/export", name, 11, 2000, "test") is not None
        rows = [row.rel_path for row in store.list_images()]
        assert sorted(rows) == sorted([deep, deep, odd, odd])


def test_path_key_is_the_hash_of_the_stored_form() -> None:
    import hashlib

    from marginwatch.storage._paths import path_key

    name = os.fsdecode(b"case1/x\xff.tif")
    assert path_key(name) == hashlib.sha256(b"/case1/x%FF.tif").hexdigest()
    assert path_key("case1/a.tif") != path_key("case1/b.tif")


def test_the_migration_keys_paths_recorded_before_it(db_url: str) -> None:
    """Rows written before 0010 get their path_key: the same version is still recognised
    and a new version still finds its predecessor."""
    from marginwatch.storage import schema
    from sqlalchemy import text

    name = os.fsdecode(b"case1/x\xff.tif")
    with Store.open(db_url, upgrade=True) as store:
        with schema.migrating(store._engine) as conn:
            schema.downgrade(conn, "0009")
        with store._engine.begin() as conn:  # a row as the 0009 code wrote it
            conn.execute(
                text("INSERT INTO images (id, root_key, rel_path, size, mtime_ns, first_seen) "
                     "VALUES ('old-1', '/export', :stored, 10, 1000, '2026-01-01 00:00:00')"),
                {"stored": "/case1/x%FF.tif"},
            )
            conn.execute(text(
                "INSERT INTO jobs (image_id, state, attempts, created_at, updated_at) "
                "VALUES ('old-1', 'done', 1, '2026-01-01 00:00:00', '2026-01-01 00:00:00')"
            ))
        store.upgrade()
        assert store.record_discovery("/export", name, 10, 1000, "test") is None
        newer = store.record_discovery("/export", name, 12, 2000, "test")
        assert newer is not None
        rows = {r.image_id: r for r in store.list_images()}
        assert rows[newer.image_id].previous_image_id == "old-1"
        assert rows["old-1"].rel_path == name
