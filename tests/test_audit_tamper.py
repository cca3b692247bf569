"""Tampering with a real audit log through the real sqlite3 command-line tool.

Each attack is one an operator with shell access could make; `marginwatch audit verify`
(the real CLI, in a subprocess) must exit 1 and name the first bad event, or, for a
truncated tail or a recomputed chain, catch it with the anchor written earlier.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from marginwatch.storage import Store
from marginwatch.storage.audit import GENESIS_HASH, event_hash

SQLITE3 = shutil.which("sqlite3") or "/usr/bin/sqlite3"
MARGINWATCH = str(Path(sys.executable).with_name("marginwatch"))
DROP_TRIGGERS = "DROP TRIGGER audit_events_no_update; DROP TRIGGER audit_events_no_delete;"

pytestmark = pytest.mark.skipif(not Path(SQLITE3).exists(), reason="sqlite3 CLI not installed")


@pytest.fixture
def db(tmp_path) -> Path:
    path = tmp_path / "audit.db"
    with Store.open(path, upgrade=True) as store:
        for i in range(6):
            store.audit("test.event", f"obj{i}", {"i": i, "note": f"event {i}"}, "tester")
    return path


def _stored_ts(text: str) -> datetime:
    """SQLite keeps UTC timestamps as naive text; the hash covers them as UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def sql(db: Path, statement: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SQLITE3, str(db), statement], capture_output=True, text=True,
                          timeout=30)


def verify(db: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MARGINWATCH, "audit", "verify", "--db", str(db), *extra],
                          capture_output=True, text=True, timeout=60)


def assert_broken_at(result: subprocess.CompletedProcess[str], seq: int) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"BROKEN at event seq {seq}:" in result.stdout
    assert "Traceback" not in result.stderr


def test_intact_chain_verifies(db):
    result = verify(db)
    assert result.returncode == 0, result.stderr
    assert "intact: 6 event(s)" in result.stdout


def test_triggers_refuse_update_and_delete_from_sqlite3(db):
    for statement in ("UPDATE audit_events SET actor='mallory' WHERE seq=2;",
                      "DELETE FROM audit_events WHERE seq=2;"):
        result = sql(db, statement)
        assert result.returncode != 0 and "append-only" in result.stderr
    assert verify(db).returncode == 0


def test_edited_payload(db):
    result = sql(db, DROP_TRIGGERS + "UPDATE audit_events SET payload_json="
                 "'{\"i\":3,\"note\":\"nothing to see\"}' WHERE seq=4;")
    assert result.returncode == 0, result.stderr
    assert_broken_at(verify(db), 4)


def test_deleted_event(db):
    assert sql(db, DROP_TRIGGERS + "DELETE FROM audit_events WHERE seq=3;").returncode == 0
    result = verify(db)
    assert_broken_at(result, 4)
    assert "expected seq 3" in result.stdout


def test_inserted_event_with_a_correctly_forged_hash(db):
    """Renumber to make room at seq 3 and forge a valid event there: the next link breaks."""
    with sqlite3.connect(db) as conn:
        ts_text, prev = conn.execute("SELECT ts, hash FROM audit_events WHERE seq=2").fetchone()
    ts = _stored_ts(ts_text)
    payload = '{"i":99,"note":"forged"}'
    forged = event_hash(3, ts, "mallory", "test.event", "objX", payload, prev)
    result = sql(db, DROP_TRIGGERS
                 + "UPDATE audit_events SET seq = seq + 1000 WHERE seq >= 3;"
                 + "UPDATE audit_events SET seq = seq - 999 WHERE seq >= 1000;"
                 + f"INSERT INTO audit_events VALUES (3, '{ts_text}', 'mallory', 'test.event', "
                 f"'objX', '{payload}', '{prev}', '{forged}');")
    assert result.returncode == 0, result.stderr
    result = verify(db)
    assert_broken_at(result, 4)
    assert "prev_hash" in result.stdout


def test_appended_event_with_a_guessed_hash(db):
    result = sql(db, "INSERT INTO audit_events SELECT 7, ts, actor, action, object_id, "
                 "payload_json, hash, '" + "ab" * 32 + "' FROM audit_events WHERE seq=6;")
    assert result.returncode == 0, result.stderr  # inserting is what append-only allows
    assert_broken_at(verify(db), 7)


def test_two_events_swapped(db):
    result = sql(db, DROP_TRIGGERS
                 + "UPDATE audit_events SET seq = -seq WHERE seq IN (2, 3);"
                 + "UPDATE audit_events SET seq = 3 WHERE seq = -2;"
                 + "UPDATE audit_events SET seq = 2 WHERE seq = -3;")
    assert result.returncode == 0, result.stderr
    assert_broken_at(verify(db), 2)


def test_truncated_tail_is_caught_by_the_anchor(db, tmp_path):
    anchor = tmp_path / "head.json"
    first = verify(db, "--anchor", str(anchor))
    assert first.returncode == 0 and anchor.exists(), first.stderr
    assert sql(db, DROP_TRIGGERS + "DELETE FROM audit_events WHERE seq >= 5;").returncode == 0
    assert verify(db).returncode == 0  # what is left is a consistent chain...
    result = verify(db, "--anchor", str(anchor))
    assert_broken_at(result, 5)  # ...but the anchor remembers seq 6
    assert "tail truncated" in result.stdout


def test_recomputed_chain_is_caught_by_the_anchor(db, tmp_path):
    """A forger who knows the algorithm rewrites event 2 and re-hashes everything after it."""
    anchor = tmp_path / "head.json"
    assert verify(db, "--anchor", str(anchor)).returncode == 0
    with sqlite3.connect(db) as conn:
        conn.executescript(DROP_TRIGGERS)
        rows = conn.execute("SELECT seq, ts, actor, action, object_id, payload_json "
                            "FROM audit_events ORDER BY seq").fetchall()
        prev = GENESIS_HASH
        for seq, ts_text, actor, action, object_id, payload in rows:
            if seq == 2:
                payload = '{"i":1,"note":"rewritten"}'
            ts = _stored_ts(ts_text)
            digest = event_hash(seq, ts, actor, action, object_id, payload, prev)
            conn.execute("UPDATE audit_events SET payload_json=?, prev_hash=?, hash=? "
                         "WHERE seq=?", (payload, prev, digest, seq))
            prev = digest
    assert verify(db).returncode == 0  # internally consistent
    result = verify(db, "--anchor", str(anchor))
    assert_broken_at(result, 6)
    assert "anchor" in result.stdout
