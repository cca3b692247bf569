"""Ground truth import: the real CLI on real SQLite files and PostgreSQL.

Rows validated first (one line per bad row naming file, line and field); nothing written
unless all are good or --skip-bad; re-import changes nothing; corrections keep both
values in the audit trail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from marginwatch.storage import Store
from marginwatch.storage.models import GroundTruth
from marginwatch.storage.testing import sample_record
from sqlalchemy import func, select

MARGINWATCH = Path(sys.executable).with_name("marginwatch")
T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
MANIFEST_HEADER = "path,label,patient_id,centre,kind,profile,um_per_px\n"



@pytest.fixture
def sqlite_url(tmp_path):
    """SQLite only: for the tests of what is refused (the checks come before storage)."""
    return str(tmp_path / "m.db")


def assess(store: Store, model_id: int, rel_path: str, probability: float, *,
           sha256: str | None = None, now: datetime = T0) -> str:
    """Discover, claim and finish one image through the real store; its image id."""
    found = store.record_discovery("export", rel_path, 100, 1, "host:daemon", now=now)
    job = store.claim_job("w", 60, now=now)
    assert job is not None and job.image_id == found.image_id
    store.finish_job(job.job_id, "w", sample_record(model_id, probability=probability,
                                                    decision=probability >= 0.5,
                                                    sha256=sha256), now=now)
    return found.image_id


def _populate(url: str) -> tuple[str, dict[str, str]]:
    with Store.open(url, upgrade=True) as store:
        model_id = store.register_model("d" * 64, "resnet18", {"threshold": 0.5})
        ids = {p: assess(store, model_id, p, prob, sha256=(c * 64 if c else None))
               for p, prob, c in [("c1/a.tif", 0.9, "a"), ("c1/b.tif", 0.1, "b"),
                                  ("c2/a.tif", 0.7, None), ("c2/b.tif", 0.2, None)]}
    return url, ids


@pytest.fixture
def populated(db_url):
    """Four assessed images in two cases; returns (url, {path: image id})."""
    return _populate(db_url)


@pytest.fixture
def populated_sqlite(sqlite_url):
    return _populate(sqlite_url)


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MARGINWATCH_CONFIG": ""}
    return subprocess.run([str(MARGINWATCH), *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=cwd)


def truth_rows(url: str) -> dict[str, tuple[str, int]]:
    with Store.open(url, readonly=True) as store, store._read() as session:
        return {t.image_id: (t.status, t.revision) for t in session.scalars(select(GroundTruth))}


def audit_actions(url: str) -> list[str]:
    with Store.open(url, readonly=True) as store:
        return [e.action for e in store.audit_events() if e.action.startswith("truth.")]


def test_manifest_import_then_reimport_changes_nothing(populated, tmp_path):
    url, ids = populated
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(MANIFEST_HEADER
                        + "c1/a.tif,tumour,p1,development,tumour-margin,grey,1\n"
                        + "c1/b.tif,benign,p1,development,benign,grey,1\n"
                        + "c2/a.tif,tumour,p2,development,tumour-focal,grey,1\n")
    first = run("truth", "import", str(manifest), "--by", "Dr Path", "--db", url)
    assert first.returncode == 0, first.stderr
    assert "3 added, 0 corrected" in first.stdout
    assert truth_rows(url) == {ids["c1/a.tif"]: ("tumour", 1), ids["c1/b.tif"]: ("clear", 1),
                               ids["c2/a.tif"]: ("tumour", 1)}
    actions = audit_actions(url)
    assert actions.count("truth.recorded") == 3 and actions[-1] == "truth.imported"
    with Store.open(url, readonly=True) as store:
        head = store.verify_audit()
    again = run("truth", "import", str(manifest), "--by", "Dr Path", "--db", url)
    assert again.returncode == 0, again.stderr
    assert "nothing changed" in again.stdout
    with Store.open(url, readonly=True) as store:
        assert store.verify_audit().head_seq == head.head_seq  # not even an audit event
    assert head.ok


def test_changed_label_is_a_correction_with_both_values(populated, tmp_path):
    url, ids = populated
    first = tmp_path / "first.csv"
    first.write_text("path,status,reported_by,report_date\n"
                     "c1/b.tif,clear,Dr A,2026-05-03\nc2/b.tif,clear,Dr A,2026-05-03\n")
    assert run("truth", "import", str(first), "--by", "clerk", "--db", url).returncode == 0
    second = tmp_path / "second.csv"
    second.write_text("path,status,reported_by,report_date,note\n"
                      "c1/b.tif,tumour,Dr B,2026-05-09,re-review\n"
                      "c2/b.tif,clear,Dr A,2026-05-03,\n")
    result = run("truth", "import", str(second), "--by", "clerk", "--db", url)
    assert result.returncode == 0, result.stderr
    assert "0 added, 1 corrected, 0 updated, 1 unchanged" in result.stdout
    assert "clear -> tumour" in result.stdout
    assert truth_rows(url)[ids["c1/b.tif"]] == ("tumour", 2)
    with Store.open(url, readonly=True) as store:
        events = [e for e in store.audit_events(ids["c1/b.tif"])
                  if e.action == "truth.corrected"]
    assert len(events) == 1
    payload = events[0].payload
    assert (payload["old_status"], payload["new_status"]) == ("clear", "tumour")
    assert payload["old"]["reported_by"] == "Dr A" and payload["new"]["reported_by"] == "Dr B"
    assert payload["line"] == 2 and events[0].actor == "clerk"


def test_sha256_and_image_keys(populated_sqlite, tmp_path):
    url, ids = populated_sqlite
    file = tmp_path / "by-sha.csv"
    file.write_text(f"image,status\n{'A' * 64},tumour\nc2/b.tif,clear\n")
    result = run("truth", "import", str(file), "--by", "clerk", "--db", url)
    assert result.returncode == 0, result.stderr
    assert truth_rows(url) == {ids["c1/a.tif"]: ("tumour", 1), ids["c2/b.tif"]: ("clear", 1)}


def test_bad_rows_are_each_named_and_nothing_is_written(populated_sqlite, tmp_path):
    url, _ = populated_sqlite
    file = tmp_path / "bad.csv"
    file.write_text("path,status,report_date\n"
                    "c1/a.tif,tumour,\n"           # 2: good
                    ",clear,\n"                    # 3: missing key
                    "c1/b.tif,maybe,\n"            # 4: unknown status
                    "c9/none.tif,clear,\n"         # 5: matches no image
                    "c1/a.tif,clear,\n"            # 6: duplicate key
                    "c2/a.tif,clear,03/05/2026\n"  # 7: bad date
                    "/abs/c2/b.tif,clear,\n")      # 8: absolute path
    result = run("truth", "import", str(file), "--by", "clerk", "--db", url)
    assert result.returncode == 2
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("marginwatch: error")]
    assert len(errors) == 7 and "nothing written" in errors[-1]
    expected = [(3, "field path", "missing key"), (4, "field status", "'maybe'"),
                (5, "field path", "matches no image"), (6, "field path", "line 2 has it"),
                (7, "field report_date", "YYYY-MM-DD"), (8, "field path", "relative")]
    for line, (no, fld, why) in zip(errors, expected, strict=False):
        assert f"{file}:{no}: {fld}" in line and why in line, line
    assert "Traceback" not in result.stderr
    assert truth_rows(url) == {}
    assert audit_actions(url) == []


def test_skip_bad_writes_the_good_rows(populated_sqlite, tmp_path):
    url, ids = populated_sqlite
    file = tmp_path / "some-bad.csv"
    file.write_text("path,status\nc1/a.tif,tumour\nc9/none.tif,clear\nc2/a.tif,unknown\n")
    result = run("truth", "import", str(file), "--by", "clerk", "--db", url, "--skip-bad")
    assert result.returncode == 0, result.stderr
    assert "1 added" in result.stdout and "2 bad row(s) skipped" in result.stdout
    assert f"{file}:3: field path" in result.stderr and f"{file}:4: field status" in result.stderr
    assert truth_rows(url) == {ids["c1/a.tif"]: ("tumour", 1)}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("path,status,surgeon\nc1/a.tif,tumour,X\n", ":1: unknown column 'surgeon'"),
        ("status\ntumour\n", ":1: no key column"),
        ("path,status,label\nc1/a.tif,tumour,tumour\n", ":1: expected exactly one of"),
        ("", ":1: empty file"),
    ],
    ids=["unknown-column", "no-key", "two-status-columns", "empty"],
)
def test_bad_header_is_one_line(tmp_path, content, message):
    url = tmp_path / "m.db"
    Store.open(url, upgrade=True).close()
    file = tmp_path / "t.csv"
    file.write_text(content)
    result = run("truth", "import", str(file), "--by", "clerk", "--db", str(url))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{file}{message}" in lines[0], result.stderr


def test_missing_file_and_empty_by(tmp_path):
    url = tmp_path / "m.db"
    Store.open(url, upgrade=True).close()
    result = run("truth", "import", str(tmp_path / "absent.csv"), "--by", "x", "--db", str(url))
    assert result.returncode == 2 and "not found" in result.stderr
    file = tmp_path / "t.csv"
    file.write_text("path,status\n")
    result = run("truth", "import", str(file), "--by", " ", "--db", str(url))
    assert result.returncode == 2 and "--by" in result.stderr


def test_truth_is_counted_per_image_version(db_url):
    """Two file versions at one path both take the path's truth (storage level)."""
    with Store.open(db_url, upgrade=True) as store:
        model_id = store.register_model("e" * 64, "resnet18", {"threshold": 0.5})
        first = assess(store, model_id, "c1/a.tif", 0.9)
        found = store.record_discovery("export", "c1/a.tif", 200, 2, "host:daemon",
                                       now=T0 + timedelta(minutes=1))
        by_path, _, _ = store.images_for_keys(paths=["c1/a.tif"])
        assert sorted(k.image_id for k in by_path["c1/a.tif"]) == sorted(
            [first, found.image_id])
        with store._read() as session:
            assert session.scalar(select(func.count()).select_from(GroundTruth)) == 0


def test_case_and_location_keys_name_every_image_of_that_location(db_url, tmp_path):
    from marginwatch.storage import Placement

    with Store.open(db_url, upgrade=True) as store:
        model_id = store.register_model("c" * 64, "resnet18", {"threshold": 0.5})
        ids = {}
        for k, (name, location) in enumerate([("LPL_01.tif", "left-posterolateral"),
                                              ("LPL_02.tif", "left-posterolateral"),
                                              ("APEX_01.tif", "apex")]):
            now = T0 + timedelta(minutes=k)
            found = store.record_discovery(
                "export", f"case7/{name}", 100 + k, 1, "host:daemon", now=now,
                placement=Placement("case7", location, "filename"))
            job = store.claim_job("w", 60, now=now)
            store.finish_job(job.job_id, "w", sample_record(model_id, probability=0.2),
                             now=now)
            ids[name] = found.image_id
    file = tmp_path / "by-location.csv"
    file.write_text("case,location,status,reported_by\n"
                    "case7,LPL,tumour,Dr A\n"               # 2: abbreviation
                    "case7,apex,clear,Dr A\n"               # 3
                    "case7,left posterolateral,clear,\n"    # 4: the same key as line 2
                    "case7,nowhere,clear,\n"                # 5: unknown location
                    "case9,base,clear,\n"                   # 6: no such image
                    "case7,,clear,\n")                      # 7: missing location
    result = run("truth", "import", str(file), "--by", "clerk", "--db", db_url)
    assert result.returncode == 2
    for line, why in ((4, "duplicate key"), (5, "unknown location"),
                      (6, "matches no image"), (7, "missing key")):
        assert any(f"{file}:{line}:" in ln and why in ln for ln in result.stderr.splitlines()), (
            line, result.stderr)
    assert truth_rows(db_url) == {}
    result = run("truth", "import", str(file), "--by", "clerk", "--db", db_url, "--skip-bad")
    assert result.returncode == 0, result.stderr
    assert truth_rows(db_url) == {ids["LPL_01.tif"]: ("tumour", 1),
                                  ids["LPL_02.tif"]: ("tumour", 1),
                                  ids["APEX_01.tif"]: ("clear", 1)}
