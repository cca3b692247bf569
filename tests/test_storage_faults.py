"""The Store heals after transient faults of the database itself, with real faults.

- read-only permissions (the process runs as ``nobody``, since root writes anyway):
  while the file is read-only a write fails with one clear line, and the first write
  after the permissions are back succeeds on a fresh read-write connection;
- ENOSPC on a small tmpfs (needs root to mount; skipped otherwise);
- a PostgreSQL restart, in a private cluster made with ``initdb`` on its own port (the
  shared server is never touched; skipped where initdb/pg_ctl are missing).

Each time nothing is lost or doubled: the audit chain holds exactly the events that
were acknowledged as written.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from marginwatch.engine.errors import DatabaseUnavailableError
from marginwatch.storage import Store

NOBODY = 65534
_READONLY_SCRIPT = r"""
import sys
from marginwatch.storage import Store
from marginwatch.engine.errors import DatabaseUnavailableError
store = Store.open(sys.argv[1])
store.audit("t", 1, {}, "t")
print("wrote", flush=True)
sys.stdin.readline()                       # the folder and file are read-only now
store._engine.dispose()                    # a fresh connection is needed (pool growth)
try:
    store.audit("t", 2, {}, "t")
    print("wrote while read-only", flush=True)
except DatabaseUnavailableError as exc:
    print("refused:", exc, flush=True)
sys.stdin.readline()                       # writable again
store.audit("t", 3, {}, "t")
print("healed", flush=True)
store.close()
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="mw-faults-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv to run the writer as nobody")
def test_read_only_permissions_heal(shared_dir: Path) -> None:
    state = shared_dir / "state"
    state.mkdir()
    db = state / "m.db"
    Store.open(db, upgrade=True).close()
    for p in (state, *state.iterdir()):
        os.chown(p, NOBODY, NOBODY)
    proc = subprocess.Popen(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         sys.executable, "-c", _READONLY_SCRIPT, str(db)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "HOME": str(state)},
    )
    try:
        assert proc.stdout.readline().strip() == "wrote", proc.stderr.read()
        files = list(state.iterdir())
        for p in files:
            os.chmod(p, 0o444)
        os.chmod(state, 0o555)
        proc.stdin.write("\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        assert line.startswith("refused:") and "read-only" in line, line + proc.stderr.read()
        os.chmod(state, 0o755)
        for p in files:
            os.chmod(p, 0o644)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "healed", proc.stderr.read()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    with Store.open(db, readonly=True) as store:
        report = store.verify_audit()
        assert report.ok and [e.object_id for e in store.audit_events()] == ["1", "3"]


@pytest.fixture
def small_tmpfs(shared_dir: Path) -> Iterator[Path]:
    mount = shared_dir / "fs"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for ENOSPC needs root")
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_disk_full_heals(small_tmpfs: Path) -> None:
    db = small_tmpfs / "m.db"
    filler = small_tmpfs / "filler"
    with Store.open(db, upgrade=True) as store:
        store.audit("t", 0, {}, "t")
        # unbuffered: a write that does not fit fails here, not later in close()
        with filler.open("wb", buffering=0) as fh:  # take every block that is left
            try:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
            except OSError:
                pass
        written, refused = 0, 0
        big = {"blob": "x" * 200_000}  # more than the WAL has room for
        for i in range(1, 6):
            try:
                store.audit("t", i, big, "t")
                written += 1
            except DatabaseUnavailableError as exc:
                assert "full" in str(exc) or "I/O" in str(exc), exc
                refused += 1
        assert refused > 0  # the fault was real
        filler.unlink()
        store.audit("t", 99, big, "t")  # healed, without reopening the store
        ids = [e.object_id for e in store.audit_events()]
        assert store.verify_audit().ok
    assert ids.count("99") == 1 and len(ids) == 1 + written + 1  # nothing lost or doubled


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def private_pg(shared_dir: Path) -> Iterator[tuple[str, list[str]]]:
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("initdb/pg_ctl not installed: cannot make a private PostgreSQL cluster")
    data = shared_dir / "pgdata"
    prefix = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot start PostgreSQL")
        os.chown(shared_dir, NOBODY, NOBODY)
        prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    env = {**os.environ, "HOME": str(shared_dir)}
    out = subprocess.run([*prefix, initdb, "-D", str(data), "-U", "postgres", "-A", "trust"],
                         capture_output=True, text=True, env=env, timeout=120)
    if out.returncode != 0:
        pytest.skip(f"initdb failed here: {out.stderr.strip()[-300:]}")
    port = _free_port()
    ctl = [*prefix, pg_ctl, "-D", str(data), "-w", "-t", "60", "-o",
           f"-p {port} -k {shared_dir} -c listen_addresses=127.0.0.1",
           "-l", str(shared_dir / "pg.log")]  # the server's output never holds our pipes
    out = subprocess.run([*ctl, "start"],
                         capture_output=True, text=True, env=env, timeout=90)
    if out.returncode != 0:
        pytest.skip(f"pg_ctl start failed here: {out.stderr.strip()[-300:]}")
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", ctl
    finally:
        subprocess.run([*ctl, "-m", "immediate", "stop"], capture_output=True, env=env,
                       timeout=60)


def test_postgres_restart_heals(private_pg: tuple[str, list[str]], shared_dir: Path) -> None:
    url, ctl = private_pg
    env = {**os.environ, "HOME": str(shared_dir)}
    with Store.open(url, upgrade=True) as store:
        store.audit("t", 1, {}, "t")
        out = subprocess.run([*ctl, "-m", "fast", "restart"], capture_output=True, text=True,
                             env=env, timeout=90)
        assert out.returncode == 0, out.stderr
        deadline, written = time.monotonic() + 30, False
        while not written and time.monotonic() < deadline:
            try:
                store.audit("t", 2, {}, "t")
                written = True
            except DatabaseUnavailableError:
                time.sleep(0.2)
        assert written
        store.audit("t", 3, {}, "t")
        assert [e.object_id for e in store.audit_events()] == ["1", "2", "3"]
        assert store.verify_audit().ok
