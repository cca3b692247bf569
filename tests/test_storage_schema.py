"""Schema: one head, models == migrations, every step up/down/up, version checks, no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import marginwatch.storage as storage
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from marginwatch.engine.errors import DatabaseUnavailableError, SchemaVersionError
from marginwatch.storage import Store, schema
from marginwatch.storage.models import Base
from sqlalchemy import inspect, text

MARGINWATCH = Path(sys.executable).with_name("marginwatch")


def test_public_names():
    assert sorted(storage.__all__) == storage.__all__
    for name in storage.__all__:
        assert hasattr(storage, name), name
    assert "Store" in storage.__all__ and "AssessmentRecord" in storage.__all__


def test_one_head():
    script = ScriptDirectory.from_config(schema.alembic_config())
    assert len(script.get_heads()) == 1
    assert schema.head_revision() == script.get_current_head()
    history = [rev.revision for rev in reversed(list(script.walk_revisions()))]
    assert list(schema.REVISIONS) == history  # the list used without importing Alembic


def test_models_match_migrations(db_url):
    with Store.open(db_url, upgrade=True) as store, store._engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
        )
    assert diff == []


def test_stairway_every_revision_up_down_up(db_url):
    """alembic-quickstart's stairway: each step upgrades, downgrades and upgrades again."""
    revisions = list(reversed(list(ScriptDirectory.from_config(schema.alembic_config())
                                   .walk_revisions())))
    with Store.open(db_url, upgrade=True) as store:
        with store._engine.begin() as conn:
            schema.downgrade(conn, "base")
        for rev in revisions:
            with store._engine.begin() as conn:
                schema.upgrade(conn, rev.revision)
            with store._engine.begin() as conn:
                schema.downgrade(conn, rev.down_revision or "base")
            with store._engine.begin() as conn:
                schema.upgrade(conn, rev.revision)
                assert schema.current_revision(conn) == rev.revision
        with store._engine.connect() as conn:
            assert "audit_events" in inspect(conn).get_table_names()


def test_upgrade_is_idempotent_and_creates_the_file(tmp_path):
    path = tmp_path / "state" / "m.db"
    # a missing folder is an error (a mistyped URL never builds a folder tree)
    for given in (path, f"sqlite:///{path}"):
        with pytest.raises(DatabaseUnavailableError, match="state does not exist"):
            Store.open(given, upgrade=True)
    assert not path.parent.exists()
    path.parent.mkdir()
    with Store.open(path, upgrade=True) as store:
        assert store.current_revision() == schema.head_revision()
    with Store.open(path, upgrade=True) as store:
        assert store.current_revision() == schema.head_revision()
    assert Store.schema_status(path) == (schema.head_revision(), schema.head_revision())


def test_sqlite_pragmas(tmp_path):
    with Store.open(tmp_path / "m.db", upgrade=True) as store, store._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000


def test_schema_newer_than_code_is_refused(db_url):
    Store.open(db_url, upgrade=True).close()
    with Store.open(db_url, upgrade=True) as store, store._engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    for kwargs in ({}, {"upgrade": True}, {"readonly": True}):
        with pytest.raises(SchemaVersionError, match="newer than this marginwatch"):
            Store.open(db_url, **kwargs)


def test_missing_or_empty_schema(tmp_path):
    with pytest.raises(DatabaseUnavailableError, match="no such database file"):
        Store.open(tmp_path / "absent.db", readonly=True)
    assert not (tmp_path / "absent.db").exists()
    (tmp_path / "empty.db").touch()
    with pytest.raises(SchemaVersionError, match="db upgrade"):
        Store.open(tmp_path / "empty.db")


@pytest.mark.parametrize(
    "argv",
    [
        ["-c", "import sys, marginwatch.storage, marginwatch.storage.testing; "
               "print('torch' in sys.modules or 'alembic' in sys.modules)"],
        ["-c", "import sys; from marginwatch.daemon.cli import main\n"
               "try: main(['audit', 'list', '--help'])\nexcept SystemExit: pass\n"
               "print('torch' in sys.modules)"],
    ],
    ids=["import-storage", "audit-help"],
)
def test_no_torch_import(argv):
    out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "False"
