"""End-to-end: odd file and folder names never stop the daemon; each ends in a final state.

Non-UTF-8 bytes in a file and in a folder name, a newline and a terminal escape in a
name, a 250-byte name and a path over 1000 bytes: a real ``marginwatch run`` assesses
them all (they are valid images) and every ordinary file beside them. The stored path
gives back the exact bytes; ``audit list`` renders them on one printable line each.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from daemon_support import MARGINWATCH, Daemon, states, wait_for, write_image
from marginwatch.storage._paths import decode_path
from marginwatch.storage.testing import PG_URL_ENV, database_url

ODD = [
    b"case1/x\xff.tif",  # not UTF-8
    b"case\xfe\xfd/plain.tif",  # a folder that is not UTF-8
    b"case1/two\nlines.tif",  # a newline
    b"case1/esc\x1b[31mred.tif",  # a terminal escape
    b"case1/" + b"L" * 246 + b".tif",  # a 250-byte name
    b"case2/" + b"/".join([b"d" * 200] * 5) + b"/deep.tif",  # a path over 1000 bytes
]
GOOD = [b"case1/good0.tif", b"case3/good1.tif"]


def _decoded_states(db: Path) -> dict[str, list[tuple[str, int, str | None]]]:
    return {decode_path(k): v for k, v in states(db).items()}


@pytest.mark.slow
def test_odd_names_are_assessed_and_never_stop_the_daemon(tmp_path: Path, tiny_model_dir) -> None:
    watch = tmp_path / "export"
    watch.mkdir()
    work = tmp_path / "state"
    work.mkdir()
    for seed, raw in enumerate(ODD + GOOD):
        write_image(Path(os.fsdecode(os.path.join(os.fsencode(watch), raw))), seed=300 + seed)
    expected = {os.fsdecode(raw) for raw in ODD + GOOD}

    daemon = Daemon(work, watch, tiny_model_dir)
    with daemon:
        daemon.start().wait_ready()

        def finished(_: object) -> bool:
            now = _decoded_states(daemon.db)
            return expected <= set(now) and all(now[k][-1][0] == "done" for k in expected)

        wait_for(daemon.db, finished, 120, daemon)
        # still running, and still assessing a file that arrives afterwards
        write_image(watch / "case1" / "after.tif", seed=999)
        wait_for(daemon.db, lambda _: _decoded_states(daemon.db).get("case1/after.tif", [("",)])
                 [-1][0] == "done", 60, daemon)
        assert daemon.stop() == 0

    # the daemon kept the audit anchor beside the database, at the head it ended with
    from daemon_support import query
    from marginwatch.storage import AuditAnchor

    anchor = AuditAnchor.read(daemon.db.with_name(daemon.db.name + ".anchor.json"))
    assert anchor.seq == query(daemon.db, "SELECT max(seq) FROM audit_events")[0][0]

    final = _decoded_states(daemon.db)
    for rel in expected:
        assert [s for s, _, _ in final[rel]] == ["done"], (rel, final[rel])
    # the stored path is the exact name: the file opens with it
    for rel in final:
        assert os.path.isfile(os.path.join(watch, rel)), ascii(rel)
    log = daemon.log()
    assert "x\ufffd" not in log and "lines.tif" not in log and "LLLL" not in log

    out = subprocess.run([MARGINWATCH, "audit", "list", "--db", str(daemon.db), "--format", "csv"],
                         capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    text = out.stdout.decode("utf-8")  # strictly UTF-8: every name rendered printable
    assert "case1/x\\xff.tif" in text
    assert "case\\xfe\\xfd/plain.tif" in text
    assert "case1/two\\nlines.tif" in text
    assert "esc\\x1b[31mred.tif" in text
    assert "\x1b" not in text


LONG = [  # near PATH_MAX once under the test's export folder; refused by VARCHAR(1000)
    b"case4/" + b"/".join([b"e" * 200] * 17) + b"/deep.tif",  # about 3 400 bytes of UTF-8
    b"case5/" + b"/".join([b"\xff" * 200] * 17) + b"/deep.tif",  # about 10 000 encoded
]


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get(PG_URL_ENV), reason=f"{PG_URL_ENV} not set")
def test_paths_of_any_length_get_a_row_on_postgresql(tmp_path: Path, tiny_model_dir) -> None:
    """The hospital's central database: a path of several kilobytes (beyond VARCHAR(1000)
    and PostgreSQL's 2704-byte B-tree entry) is recorded and assessed like any other;
    it used to be skipped with only a log line."""
    watch = tmp_path / "export"
    watch.mkdir()
    work = tmp_path / "state"
    work.mkdir()
    for seed, raw in enumerate([*LONG, GOOD[0]]):
        write_image(Path(os.fsdecode(os.path.join(os.fsencode(watch), raw))), seed=500 + seed)
    expected = {os.fsdecode(raw) for raw in [*LONG, GOOD[0]]}
    with database_url("postgresql", tmp_path) as url:
        daemon = Daemon(work, watch, tiny_model_dir, db=url)
        with daemon:
            daemon.start().wait_ready()

            def finished(_: object) -> bool:
                now = _decoded_states(url)
                return expected <= set(now) and all(now[k][-1][0] == "done" for k in expected)

            wait_for(url, finished, 120, daemon)
            assert daemon.stop() == 0
        final = _decoded_states(url)
        assert {rel: [s for s, _, _ in final[rel]] for rel in expected} == {
            rel: ["done"] for rel in expected
        }
        assert "could not be recorded" not in daemon.log()
