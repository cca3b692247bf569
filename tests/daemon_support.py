"""Helpers for the daemon's end-to-end tests (no tests here).

The daemon runs as a real ``marginwatch run`` process on real folders and a real
database: an SQLite file in its state folder, or (the ``daemon_db`` fixture in
conftest.py, when ``MARGINWATCH_TEST_PG_URL`` is set) a fresh PostgreSQL schema.
READY=1 is received on a real ``NOTIFY_SOCKET`` datagram socket; the end state is read
from the database: SQLite with :mod:`sqlite3` (read-only), PostgreSQL with SQLAlchemy.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import tomli_w
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

MARGINWATCH = str(Path(sys.executable).with_name("marginwatch"))
FINAL_STATES = ("done", "duplicate", "failed", "superseded", "moved")

DAEMON_DEFAULTS: dict[str, Any] = {
    "settle_seconds": 0.3,
    "poll_interval_seconds": 0.1,
    "stable_polls": 2,
    "rescan_seconds": 3.0,
    "lease_seconds": 4.0,
    "retry_delay_seconds": 0.2,
    "max_attempts": 3,
    "workers": 2,
    "max_batch_tiles": 16,
    "max_batch_wait_ms": 20.0,
    "shutdown_seconds": 10.0,
    "heartbeat_seconds": 0.5,
}
ENGINE_DEFAULTS: dict[str, Any] = {"backend": "torch-cpu", "precision": "fp32"}


def _command() -> list[str]:
    return [MARGINWATCH]


def write_config(path: Path, daemon: dict[str, Any], engine: dict[str, Any]) -> Path:
    sections = {"daemon": {**DAEMON_DEFAULTS, **daemon}, "engine": {**ENGINE_DEFAULTS, **engine}}
    path.write_text(tomli_w.dumps(_toml_ready(sections)))
    return path


def _toml_ready(value: Any) -> Any:
    """Paths as strings (TOML has no path type); everything else as given."""
    if isinstance(value, dict):
        return {key: _toml_ready(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_toml_ready(item) for item in value]
    return str(value) if isinstance(value, os.PathLike) else value


def write_image(path: Path, seed: int, side: int = 96) -> Path:
    """A small FCM-like grey TIFF (tissue ellipse + nuclei), distinct bytes per seed."""
    from conftest import write_fcm_tiff

    path.parent.mkdir(parents=True, exist_ok=True)
    write_fcm_tiff(path, shape=(side, side), seed=seed, dtype="uint8")
    return path


def image_bytes(seed: int, side: int = 96) -> bytes:
    import io

    from conftest import write_fcm_tiff

    buf = io.BytesIO()
    write_fcm_tiff(buf, shape=(side, side), seed=seed, dtype="uint8")
    return buf.getvalue()


class Daemon:
    """One ``marginwatch run`` process with its own NOTIFY_SOCKET."""

    def __init__(
        self,
        work: Path,
        watch: Path,
        model_dir: Path,
        *,
        daemon: dict[str, Any] | None = None,
        engine: dict[str, Any] | None = None,
        prefix: list[str] | None = None,
        db: Path | str | None = None,
    ) -> None:
        self.work = work
        self.watch = watch
        self.model_dir = model_dir
        #: an SQLite file (a Path; by default in ``work``) or a database URL (a str)
        self.db: Path | str = work / "marginwatch.db" if db is None else db
        self.config = write_config(work / "marginwatch.toml", daemon or {}, engine or {})
        self.prefix = prefix or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.messages: list[str] = []
        self.runs = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def log_path(self) -> Path:
        return self.work / f"daemon-{self.runs}.log"

    def start(self, extra_env: dict[str, str] | None = None) -> Daemon:
        self.runs += 1
        sock_path = self.work / f"notify-{self.runs}.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(sock_path))
        os.chmod(sock_path, 0o777)
        self._closing.clear()
        self._reader = threading.Thread(target=self._drain, args=(self.sock,),
                                        name="notify-listener")
        self._reader.start()
        env = {
            **os.environ,
            "NOTIFY_SOCKET": str(sock_path),
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "MARGINWATCH_LOG_LEVEL": "INFO",
            **(extra_env or {}),
        }
        env.pop("MARGINWATCH_CONFIG", None)
        log = open(self.log_path, "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [*self.prefix, *_command(), "run", "--watch", str(self.watch),
             "--config", str(self.config), "--db", str(self.db), "--model", str(self.model_dir)],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        log.close()
        return self

    def _drain(self, sock: socket.socket) -> None:
        # Like systemd, read every datagram promptly: a full queue would block the sender.
        sock.settimeout(0.1)
        while not self._closing.is_set():
            try:
                data = sock.recv(4096).decode()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.extend(data.splitlines())

    def notifications(self, timeout: float = 0.0) -> list[str]:
        time.sleep(timeout)
        with self._lock:
            return list(self.messages)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "READY=1" in self.notifications(0.2):
                return
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
        raise AssertionError(f"no READY=1 within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return "\n".join(
            (self.work / f"daemon-{i}.log").read_text(errors="replace")[-6000:]
            for i in range(1, self.runs + 1)
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.close_socket()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(30)
        self.close_socket()

    def close_socket(self) -> None:
        self._closing.set()
        if self._reader is not None:
            self._reader.join(5)
            self._reader = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.close_socket()


@cache
def _engine(url: str) -> Engine:
    return create_engine(url, poolclass=NullPool)  # no connection outlives a query


def query(db: Path | str, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` (``?`` placeholders) from an SQLite file or a database URL."""
    if isinstance(db, Path):
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()
    parts = sql.split("?")
    named = parts[0] + "".join(f":p{i}{part}" for i, part in enumerate(parts[1:]))
    with _engine(db).connect() as conn:
        rows = conn.execute(text(named), {f"p{i}": v for i, v in enumerate(args)})
        return [tuple(row) for row in rows]


def states(db: Path | str) -> dict[str, list[tuple[str, int, str | None]]]:
    """rel_path -> [(state, attempts, error_class)] for every recorded version."""
    if isinstance(db, Path) and not db.exists():
        return {}
    out: dict[str, list[tuple[str, int, str | None]]] = {}
    for rel, state, attempts, error in query(
        db, "SELECT i.rel_path, j.state, j.attempts, j.error_class FROM images i "
        "JOIN jobs j ON j.image_id = i.id ORDER BY j.id"
    ):
        out.setdefault(rel, []).append((state, attempts, error))
    return out


def wait_for(
    db: Path | str, done: Callable[[dict[str, list[tuple[str, int, str | None]]]], bool],
    timeout: float, daemon: Daemon | None = None,
) -> dict[str, list[tuple[str, int, str | None]]]:
    deadline = time.monotonic() + timeout
    current: dict[str, list[tuple[str, int, str | None]]] = {}
    while time.monotonic() < deadline:
        try:
            current = states(db)
        except (sqlite3.OperationalError, DBAPIError):  # not created yet
            current = {}
        if done(current):
            return current
        if daemon is not None and not daemon.alive():
            raise AssertionError(f"daemon died:\n{daemon.log()}")
        time.sleep(0.2)
    summary = {k: v for k, v in list(current.items())[:20]}
    if daemon is not None and daemon.alive():
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGUSR1)  # the daemon dumps its thread stacks
        time.sleep(1.0)
    log = daemon.log() if daemon else ""
    raise AssertionError(f"timed out after {timeout}s; {len(current)} recorded: {summary}\n{log}")


def wait_until(condition: Callable[[], bool], timeout: float, poll: float = 0.05) -> bool:
    """Poll ``condition`` for up to ``timeout`` seconds; True as soon as it holds.

    For tests that show something did NOT happen: wait, bounded, for the event that
    would show it did, and assert that it never came.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
    return True


def all_final(expected: set[str]) -> Callable[[dict[str, list[Any]]], bool]:
    def check(current: dict[str, list[Any]]) -> bool:
        return expected <= set(current) and all(
            v[-1][0] in FINAL_STATES for k, v in current.items() if k in expected
        )

    return check


def assert_audit_ok(db: Path | str) -> None:
    out = subprocess.run(
        [MARGINWATCH, "audit", "verify", "--db", str(db)],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def audit_actions(db: Path | str) -> list[str]:
    return [a for (a,) in query(db, "SELECT action FROM audit_events ORDER BY seq")]
