"""Cases and margin locations in the Store, on SQLite files and (when set) PostgreSQL.

Status per location is the worst of its images (tumour > not assessable > pending >
clear); closing is audited; an idle case closes; a late image reopens, audited; the
migration from the previous head keeps every row and places old images in cases.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest
from marginwatch.engine.errors import ConflictError, NotFoundError
from marginwatch.storage import Placement, Store, schema
from marginwatch.storage.testing import sample_record
from sqlalchemy import inspect, select, text

T0 = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
ACTOR = "host:daemon"


@pytest.fixture
def model_id(store):
    return store.register_model("d" * 64, "resnet18", {"threshold": 0.5})


def _add(store, rel_path, location="apex", *, folder="case1", now=T0, issue=None, size=100):
    placement = Placement(case_folder=folder, location=location, source="filename", issue=issue)
    found = store.record_discovery("export", rel_path, size, 1, ACTOR, now=now,
                                   placement=placement)
    assert found is not None
    return found


def _assess(store, model_id, found, *, decision, now=T0):
    job = store.claim_job("w", 60, now=now)
    assert job.job_id == found.job_id
    store.finish_job(job.job_id, "w", sample_record(model_id, decision=decision), now=now)


def _fail(store, found, now=T0):
    job = store.claim_job("w", 60, now=now)
    assert job.job_id == found.job_id
    store.fail_job(job.job_id, "w", "UnreadableImageError", "bad", None, 1, now=now)


def _states(case):
    return {loc.location: loc.state for loc in case.locations}


def test_status_per_location_is_the_worst_of_its_images(store, model_id):
    clear_apex = _add(store, "case1/APEX_1.tif", "apex")
    tumour_lpl = _add(store, "case1/LPL_1.tif", "left-posterolateral")
    clear_lpl = _add(store, "case1/LPL_2.tif", "left-posterolateral")
    failed_rpl = _add(store, "case1/RPL_1.tif", "right-posterolateral")
    clear_rpl = _add(store, "case1/RPL_2.tif", "right-posterolateral")
    clear_base = _add(store, "case1/BASE_1.tif", "base")
    _add(store, "case1/BASE_2.tif", "base")  # stays pending
    _assess(store, model_id, clear_apex, decision=False)
    _assess(store, model_id, tumour_lpl, decision=True)
    _assess(store, model_id, clear_lpl, decision=False)
    _fail(store, failed_rpl)
    _assess(store, model_id, clear_rpl, decision=False)
    _assess(store, model_id, clear_base, decision=False)

    (case,) = store.list_cases()
    assert _states(case) == {
        "apex": "clear",
        "left-posterolateral": "tumour",
        "right-posterolateral": "not-assessable",
        "base": "pending",
    }
    assert case.status == "tumour" and case.state == "open" and case.images == 7
    assert dict(case.counts) == {"tumour": 1, "not-assessable": 1, "pending": 1, "clear": 4}
    lpl = next(loc for loc in case.locations if loc.location == "left-posterolateral")
    assert lpl.images == 2 and lpl.max_probability == pytest.approx(0.91)
    assert case.label() == "case1" and case.label("id") == f"case {case.case_id[:8]}"


@pytest.mark.parametrize(
    ("outcomes", "expected"),
    [
        ((False, None), "pending"),  # pending beats clear
        (("fail", None), "not-assessable"),  # not assessable beats pending
        (("fail", True), "tumour"),  # tumour beats not assessable
        ((False, False), "clear"),
    ],
)
def test_order_of_states(store, model_id, outcomes, expected):
    for i, outcome in enumerate(outcomes):
        found = _add(store, f"case1/ANT_{i}.tif", "anterior", size=100 + i)
        if outcome == "fail":
            _fail(store, found)
        elif outcome is not None:
            _assess(store, model_id, found, decision=outcome)
    (case,) = store.list_cases()
    assert _states(case) == {"anterior": expected} and case.status == expected


def test_a_duplicate_takes_the_state_of_the_assessment_it_links_to(store, model_id):
    first = _add(store, "case1/LPL_1.tif", "left-posterolateral")
    _assess(store, model_id, first, decision=True)
    again = _add(store, "case2/POST_1.tif", "posterior", folder="case2")
    job = store.claim_job("w", 60, now=T0)
    pred = store.list_images(limit=10)[-1].prediction_id
    store.mark_duplicate(job.job_id, "w", "a" * 64, pred, now=T0)
    assert again.image_id == job.image_id
    case2 = store.case_detail("case2").case
    assert _states(case2) == {"posterior": "tumour"}


def test_cases_are_per_folder_and_audited_with_ids_only(store):
    a = _add(store, "case1/a.tif")
    b = _add(store, "case2/b.tif", folder="case2")
    _add(store, "case2/c.tif", "unspecified", folder="case2", issue="sidecar is not valid JSON")
    cases = {c.folder: c for c in store.list_cases()}
    assert set(cases) == {"case1", "case2"} and cases["case2"].issues == 1
    opened = [e for e in store.audit_events() if e.action == "case.opened"]
    assert [e.object_id for e in opened] == [cases["case1"].case_id, cases["case2"].case_id]
    assert [e.payload["image_id"] for e in opened] == [a.image_id, b.image_id]
    discovered = [e for e in store.audit_events() if e.action == "image.discovered"]
    assert discovered[2].payload["location_issue"] == "sidecar is not valid JSON"
    assert all("case1" not in str(e.payload) and "case2" not in str(e.payload)
               for e in store.audit_events())  # folder names stay in the cases row
    detail = store.case_detail(cases["case2"].case_id[:6])
    assert [i.location for i in detail.images] == ["apex", "unspecified"]
    assert detail.images[1].location_issue == "sidecar is not valid JSON"


def test_an_image_in_the_export_root_is_in_no_case(store):
    _add(store, "loose.tif", "unspecified", folder=None, issue="not in a case folder")
    assert store.list_cases() == [] and store.images_outside_cases() == 1
    assert store.current_case() is None


def test_close_is_audited_and_a_late_image_reopens(store):
    _add(store, "case1/a.tif")
    closed = store.close_case("case1", "Dr Who", "all faces done", now=T0 + timedelta(minutes=5))
    assert (closed.state, closed.closed_by, closed.close_reason, closed.close_note) == (
        "closed", "Dr Who", "closed", "all faces done")
    with pytest.raises(ConflictError, match="already closed"):
        store.close_case("case1", "Dr Who")
    assert store.list_cases(open_only=True) == []
    _add(store, "case1/late.tif", "base", now=T0 + timedelta(minutes=9))
    detail = store.case_detail("case1")
    assert detail.case.state == "open" and detail.case.reopened == 1
    assert detail.case.closed_by is None
    actions = [(e.action, e.actor) for e in detail.events]
    assert actions == [("case.opened", ACTOR), ("case.closed", "Dr Who"),
                       ("case.reopened", ACTOR)]
    assert detail.events[1].payload == {"reason": "closed", "note": "all faces done"}
    assert detail.events[2].payload["closed_by"] == "Dr Who"
    assert store.verify_audit().ok


def test_idle_cases_close(store):
    _add(store, "case1/a.tif", now=T0)
    _add(store, "case2/a.tif", folder="case2", now=T0 + timedelta(minutes=50))
    assert store.close_idle_cases(3600, ACTOR, now=T0 + timedelta(minutes=59)) == 0
    assert store.close_idle_cases(3600, ACTOR, now=T0 + timedelta(minutes=61)) == 1
    cases = {c.folder: c for c in store.list_cases()}
    assert (cases["case1"].state, cases["case1"].close_reason) == ("closed", "idle")
    assert cases["case2"].state == "open"
    assert store.current_case().case.folder == "case2"  # the open one


def test_list_since_and_unknown_case(store):
    _add(store, "case1/a.tif", now=T0)
    _add(store, "case2/a.tif", folder="case2", now=T0 + timedelta(days=2))
    assert [c.folder for c in store.list_cases(since=T0 + timedelta(days=1))] == ["case2"]
    assert [c.folder for c in store.list_cases()] == ["case2", "case1"]
    with pytest.raises(NotFoundError, match="no such case"):
        store.case_detail("nope")
    with pytest.raises(NotFoundError):
        store.close_case("nope", "Dr Who")


def test_alerts_carry_their_location(store, model_id):
    found = _add(store, "case1/LPL_1.tif", "left-posterolateral")
    _assess(store, model_id, found, decision=True)
    (alert,) = store.open_alerts()
    assert alert.location == "left-posterolateral"
    assert store.latest_alert_detail().alert.location == "left-posterolateral"
    acked = store.acknowledge(alert.id, "Dr Who")
    assert acked.location == "left-posterolateral"


def test_readonly_store_reads_cases(store, db_url):
    _add(store, "case1/a.tif")
    with Store.open(db_url, readonly=True) as reader:
        assert [c.folder for c in reader.list_cases()] == ["case1"]
        with pytest.raises(Exception, match="read-only"):
            reader.close_case("case1", "Dr Who")


# --- migration from the previous head, with data --------------------------------------


def _columns(conn, table):
    return [c["name"] for c in inspect(conn).get_columns(table)]


def _rows(conn, table, columns):
    """Rows of ``table`` over ``columns``: those the old schema had, so that a column a later
    migration adds (0002 cases, 0005 versions, 0007 quality, ...) is not a difference."""
    order = ", ".join(columns)
    rows = conn.execute(text(f"SELECT {order} FROM {table} ORDER BY {columns[0]}")).all()
    return [tuple(r) for r in rows]


def test_upgrade_from_0001_with_data_loses_nothing(db_url, tmp_path):
    """Fill a database with images, results, failures, alerts, acks and audit; migrate."""
    with Store.open(db_url, upgrade=True) as store:
        model = store.register_model("e" * 64, "resnet18", {"threshold": 0.5})
        odd = os.fsdecode(b"caseC\xff")  # not UTF-8: stored escaped, read back exactly
        paths = ["caseA/LPL_1.tif", "caseA/RPL_1.tif", "caseB/x/APEX.tif", "root.tif",
                 f"{odd}/y.tif"]
        for i, path in enumerate(paths):
            store.record_discovery("export", path, 100 + i, 1, ACTOR,
                                   now=T0 + timedelta(minutes=i))
        for outcome in (True, False, "fail"):
            job = store.claim_job("w", 60, now=T0)
            if outcome == "fail":
                store.fail_job(job.job_id, "w", "UnreadableImageError", "bad", None, 1, now=T0)
            else:
                store.finish_job(job.job_id, "w", sample_record(model, decision=outcome), now=T0)
        store.acknowledge(store.open_alerts()[0].id, "Dr Who", "seen")
        with schema.migrating(store._engine) as conn:
            schema.downgrade(conn, "0001")  # what today's head (before cases) wrote
        tables = ["audit_events", "images", "jobs", "predictions", "tiles", "heatmaps",
                  "alerts", "models"]
        with store._engine.connect() as conn:
            assert schema.current_revision(conn) == "0001"
            old_columns = {t: _columns(conn, t) for t in tables}
            before = {t: _rows(conn, t, old_columns[t]) for t in tables}
    with Store.open(db_url, upgrade=True) as store:
        assert store.current_revision() == schema.head_revision()
        with store._engine.connect() as conn:
            after = {t: _rows(conn, t, old_columns[t]) for t in tables}
        assert after == before
        assert all(len(before[t]) > 0 for t in tables)
        assert store.verify_audit().ok
        cases = {c.folder: c for c in store.list_cases()}
        assert set(cases) == {"caseA", "caseB", odd}
        assert cases[odd].status == "pending"
        assert cases["caseA"].images == 2 and cases["caseA"].status == "tumour"
        assert cases["caseB"].status == "not-assessable"
        assert {c.state for c in cases.values()} == {"closed"}
        assert cases["caseA"].close_reason == "migrated"
        assert cases["caseA"].last_image_at == T0 + timedelta(minutes=1)
        assert {loc.location for loc in cases["caseA"].locations} == {"unspecified"}
        assert store.images_outside_cases() == 1
        assert store.open_alerts()[0].location == "unspecified"
        # a late image of a migrated case reopens it like any closed case
        store.record_discovery("export", "caseA/late.tif", 5, 5, ACTOR, now=T0 + timedelta(hours=1),
                               placement=Placement("caseA", "base", "sidecar"))
        assert store.case_detail("caseA").case.reopened == 1
    with Store.open(db_url, upgrade=True) as store, store._engine.connect() as conn:
        tables_now = set(inspect(conn).get_table_names())
        assert "cases" in tables_now
        count = conn.execute(select(text("count(*)")).select_from(text("cases"))).scalar()
        assert count == 3
