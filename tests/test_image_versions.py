"""A file whose content changes after it was assessed is a new version, linked and visible.

Store level (SQLite and PostgreSQL): a second version of the same path is linked to the
latest earlier one, in the row and in the audit chain. End to end: a real daemon at
its shipped readiness defaults assesses a file, a writer process replaces it with new
content (temp name + rename, as scanners do), and the new version is assessed on its
own, linked to the first, and shown as such by ``marginwatch audit show``/``list`` and
``marginwatch dashboard --once``; the first version's result stays as it was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from daemon_support import MARGINWATCH, Daemon, image_bytes, query, wait_for
from marginwatch.storage import Store


def test_a_changed_file_is_a_new_version_linked_to_the_last(store: Store) -> None:
    first = store.record_discovery("export", "case/a.tif", 100, 1, "daemon")
    other = store.record_discovery("export", "case/b.tif", 100, 1, "daemon")
    second = store.record_discovery("export", "case/a.tif", 120, 2, "daemon")
    third = store.record_discovery("export", "case/a.tif", 90, 3, "daemon")
    assert store.record_discovery("export", "case/a.tif", 90, 3, "daemon") is None  # seen
    rows = {r.image_id: r for r in store.list_images()}
    assert rows[first.image_id].previous_image_id is None
    assert rows[other.image_id].previous_image_id is None  # another file, not a version
    assert rows[second.image_id].previous_image_id == first.image_id
    assert rows[third.image_id].previous_image_id == second.image_id  # a chain, in order
    (event,) = [e for e in store.audit_events(third.image_id) if e.action == "image.discovered"]
    assert event.payload["previous_image_id"] == second.image_id  # in the hash chain
    assert store.verify_audit().ok


def test_the_migration_links_versions_recorded_before_it(store: Store) -> None:
    from marginwatch.storage import schema

    first = store.record_discovery("export", "case/a.tif", 100, 1, "daemon")
    second = store.record_discovery("export", "case/a.tif", 120, 2, "daemon")
    with schema.migrating(store._engine) as conn:
        schema.downgrade(conn, "0004")  # before versions were linked
    store.upgrade()
    rows = {r.image_id: r.previous_image_id for r in store.list_images()}
    assert rows == {first.image_id: None, second.image_id: first.image_id}


REPLACE = r"""
import os, sys
data = open(sys.argv[1], "rb").read()
with open(sys.argv[2] + ".part", "wb") as fh:  # a temporary name the daemon ignores
    fh.write(data)
os.replace(sys.argv[2] + ".part", sys.argv[2])  # then renamed over the assessed file
"""


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MARGINWATCH, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "160"})


@pytest.mark.slow
def test_daemon_assesses_a_replaced_file_as_a_linked_new_version(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    watch = tmp_path / "export"
    (watch / "case").mkdir(parents=True)
    work = tmp_path / "state"
    work.mkdir()
    daemon = Daemon(work, watch, tiny_model_dir,
                    daemon={"settle_seconds": 0.0, "poll_interval_seconds": 1.0})
    target = watch / "case" / "a.tif"
    new_content = tmp_path / "new.tif"
    new_content.write_bytes(image_bytes(22, side=160))
    with daemon:
        daemon.start().wait_ready()
        target.write_bytes(image_bytes(21, side=160))
        wait_for(daemon.db, lambda cur: [v[0] for v in cur.get("case/a.tif", [])] == ["done"],
                 60, daemon)
        subprocess.run([sys.executable, "-c", REPLACE, str(new_content), str(target)],
                       check=True, timeout=60)
        final = wait_for(daemon.db, lambda cur: [v[0] for v in cur.get("case/a.tif", [])] == [
            "done", "done"], 60, daemon)
        assert daemon.stop() == 0
    assert [v[0] for v in final["case/a.tif"]] == ["done", "done"]
    (v1, p1, sha1, prev1), (v2, p2, sha2, prev2) = query(
        daemon.db, "SELECT i.id, j.prediction_id, i.sha256, i.previous_id FROM images AS i "
        "JOIN jobs AS j ON j.image_id = i.id ORDER BY j.id")
    assert prev1 is None and prev2 == v1  # linked, not silently replaced
    assert p1 != p2 and sha1 != sha2  # assessed again, the first result kept
    db = f"sqlite:///{daemon.db}"
    shown = _cli("audit", "show", v2, "--db", db)
    assert shown.returncode == 0, shown.stderr
    assert f"version of    image {v1}" in shown.stdout
    listed = _cli("audit", "list", "--db", db, "--format", "json")
    assert listed.returncode == 0, listed.stderr
    links = {row["image_id"]: row["previous_image_id"] for row in json.loads(listed.stdout)}
    assert links == {v1: None, v2: v1}
    screen = _cli("dashboard", "--once", "--db", db, "--width", "120", "--height", "40")
    assert screen.returncode == 0, screen.stderr
    assert "new version" in screen.stdout
    assert "a.tif" not in daemon.log()  # ids only in the log


# --- a version whose file changed before it was read: superseded, never an alert -------


def test_a_newer_version_supersedes_the_unread_one_without_an_alert(store: Store) -> None:
    first = store.record_discovery("export", "case/a.tif", 100, 1, "daemon")
    assert first is not None
    assessed = store.record_discovery("export", "case/b.tif", 100, 1, "daemon")
    assert assessed is not None
    second = store.record_discovery("export", "case/a.tif", 120, 2, "daemon")
    assert second is not None
    rows = {r.image_id: r for r in store.list_images()}
    assert rows[first.image_id].state == "superseded"  # its bytes are gone: never readable
    assert rows[second.image_id].state == "pending"
    assert rows[assessed.image_id].state == "pending"  # another file: untouched
    (event,) = [e for e in store.audit_events(first.image_id) if e.action == "image.superseded"]
    assert event.payload["newer_image_id"] == second.image_id  # a pointer, in the chain
    assert store.alerts() == []
    assert store.verify_audit().ok


def test_a_still_changing_file_waits_without_an_attempt_then_is_superseded(
    store: Store,
) -> None:
    first = store.record_discovery("export", "case/a.tif", 100, 1, "daemon")
    assert first is not None
    held = store.claim_job("w1", 30.0)
    assert held is not None and held.job_id == first.job_id and held.attempts == 1
    assert store.wait_for_change(held.job_id, "w1", 60.0) == "pending"
    (row,) = store.list_images()
    assert (row.state, row.attempts, row.error_class) == ("pending", 0, None)  # no attempt
    assert store.claim_job("w1", 30.0) is None  # waits for the delay, no busy re-reading
    later = datetime.now(UTC) + timedelta(seconds=120)
    again = store.claim_job("w1", 30.0, now=later)
    assert again is not None and again.attempts == 1
    # the newer version is recorded while this one is being read: closed, pointing to it
    second = store.record_discovery("export", "case/a.tif", 120, 2, "daemon", now=later)
    assert second is not None
    assert store.wait_for_change(again.job_id, "w1", 60.0, now=later) == "superseded"
    rows = {r.image_id: r.state for r in store.list_images()}
    assert rows == {first.image_id: "superseded", second.image_id: "pending"}
    assert store.alerts() == []
    assert store.verify_audit().ok


# --- a file renamed before it was read: followed to its new name, never an alert -------


def test_a_file_not_found_is_closed_as_moved_once_its_new_name_is_recorded(
    store: Store,
) -> None:
    old = store.record_discovery("export", "caseA/a.tif", 100, 7, "daemon")
    assert old is not None
    held = store.claim_job("w1", 30.0)
    assert held is not None and held.job_id == old.job_id
    assert store.follow_move(held.job_id, "w1") is None  # not recorded anywhere else yet
    store.fail_job(held.job_id, "w1", "FileNotFoundError", "caseA/a.tif: gone", 0.0, 5)
    other = store.record_discovery("export", "caseA/b.tif", 100, 8, "daemon")  # not it
    new = store.record_discovery("export", "caseB/a.tif", 100, 7, "daemon")
    assert new is not None and other is not None
    rows = {r.image_id: r.state for r in store.list_images()}
    assert rows == {old.image_id: "moved", other.image_id: "pending", new.image_id: "pending"}
    (event,) = [e for e in store.audit_events(old.image_id) if e.action == "image.moved"]
    assert event.payload["new_image_id"] == new.image_id  # a pointer, in the chain
    assert store.alerts() == []
    assert store.verify_audit().ok


def test_a_held_job_follows_its_file_to_a_new_name_recorded_first(store: Store) -> None:
    old = store.record_discovery("export", "caseA/a.tif", 100, 7, "daemon")
    new = store.record_discovery("export", "caseB/a.tif", 100, 7, "daemon")
    assert old is not None and new is not None
    held = store.claim_job("w1", 30.0)
    assert held is not None and held.job_id == old.job_id
    assert store.follow_move(held.job_id, "w1") == new.image_id
    rows = {r.image_id: r.state for r in store.list_images()}
    assert rows == {old.image_id: "moved", new.image_id: "pending"}
    assert store.alerts() == []
    assert store.verify_audit().ok


def test_the_inode_tells_a_renamed_file_from_a_copy(store: Store) -> None:
    """Same size and mtime but another inode is a copy (``cp -p``), not the file that went
    missing: it does not close the old job as moved; the file under its new name does."""
    old = store.record_discovery("export", "caseA/a.tif", 100, 7, "daemon", inode=41)
    copy = store.record_discovery("export", "caseC/a.tif", 100, 7, "daemon", inode=99)
    assert old is not None and copy is not None
    held = store.claim_job("w1", 30.0)
    assert held is not None and held.job_id == old.job_id
    assert store.follow_move(held.job_id, "w1") is None  # the copy is not where it went
    store.fail_job(held.job_id, "w1", "FileNotFoundError", "caseA/a.tif: gone", 0.0, 5)
    assert {r.image_id: r.state for r in store.list_images()}[old.image_id] == "pending"
    renamed = store.record_discovery("export", "caseB/a.tif", 100, 7, "daemon", inode=41)
    assert renamed is not None
    rows = {r.image_id: r.state for r in store.list_images()}
    assert rows == {old.image_id: "moved", copy.image_id: "pending", renamed.image_id: "pending"}
    (event,) = [e for e in store.audit_events(old.image_id) if e.action == "image.moved"]
    assert event.payload["new_image_id"] == renamed.image_id
    assert store.alerts() == []
