"""The watchdog path end to end, with this test playing systemd.

The test binds the notify socket (SO_PASSCRED, so each datagram carries its sender's
pid, which systemd checks for NotifyAccess=main), starts the real daemon (``marginwatch
run``, the real :class:`~marginwatch.daemon.service.Service`) with NOTIFY_SOCKET,
WATCHDOG_USEC and WATCHDOG_PID set as systemd sets them, and runs the watchdog as
systemd does: activated when start-up completes (READY=1), reset by each WATCHDOG=1,
expired when no ping arrives within WATCHDOG_USEC. A healthy daemon keeps pinging and is
never declared dead. A stuck one is made the way a real one gets stuck: the test holds
the SQLite write lock, so the main loop's next heartbeat waits on the database (for
``db_busy_timeout_seconds``, here a minute) and sends no more pings.
"""

from __future__ import annotations

import array
import os
import shlex
import signal
import socket
import sqlite3
import struct
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from daemon_support import MARGINWATCH, Daemon, wait_until, write_config, write_image

WATCHDOG_SEC = 2.0  # the unit's WatchdogSec=, shortened for the test
START_TIMEOUT_SEC = 60.0  # TimeoutStartSec=: until READY=1 (a busy machine loads torch slowly)


@dataclass
class Supervision:
    """What the fake systemd saw."""

    messages: list[tuple[float, int, str]] = field(default_factory=list)
    expired_at: float | None = None
    started_at: float = 0.0
    stuck_at: float = 0.0

    def values(self, key: str) -> list[str]:
        out = []
        for _, _, payload in self.messages:
            for line in payload.splitlines():
                name, _, value = line.partition("=")
                if name == key:
                    out.append(value)
        return out


def _recv_with_pid(sock: socket.socket) -> tuple[str, int | None]:
    creds_size = struct.calcsize("3i")
    data, ancdata, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(creds_size))
    pid = None
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid, _uid, _gid = array.array("i", payload[:creds_size])
    return data.decode(), pid


def _daemon_command(tmp_path: Path, model_dir: Path) -> str:
    """``marginwatch run`` on a fresh export folder and SQLite file, as a shell word list."""
    watch, work = tmp_path / "export", tmp_path / "state"
    watch.mkdir()
    work.mkdir()
    write_image(watch / "case1" / "a.tif", seed=1)
    config = write_config(work / "marginwatch.toml", {"db_busy_timeout_seconds": 60.0}, {})
    argv = [MARGINWATCH, "run", "--watch", str(watch), "--config", str(config),
            "--db", str(work / "marginwatch.db"), "--model", str(model_dir)]
    return " ".join(shlex.quote(a) for a in argv)


def _supervise(
    tmp_path: Path, model_dir: Path, *, observe_seconds: float,
    on_message: Callable[[Supervision], None] = lambda seen: None,
) -> tuple[Supervision, subprocess.Popen[bytes]]:
    """Run the daemon as systemd would; watch for ``observe_seconds`` after READY=1."""
    address = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind(address)
    env = {
        **os.environ,
        "NOTIFY_SOCKET": address,
        "WATCHDOG_USEC": str(int(WATCHDOG_SEC * 1_000_000)),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("WATCHDOG_PID", None)
    env.pop("MARGINWATCH_CONFIG", None)
    # systemd sets WATCHDOG_PID to the pid it forks; `exec` keeps the shell's pid.
    command = f"WATCHDOG_PID=$$; export WATCHDOG_PID; exec {_daemon_command(tmp_path, model_dir)}"
    seen = Supervision()
    proc = subprocess.Popen(["/bin/sh", "-c", command], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        seen.started_at = time.monotonic()
        deadline = seen.started_at + START_TIMEOUT_SEC
        stop_at = deadline + observe_seconds  # moved to READY=1 + observe_seconds
        while time.monotonic() < stop_at:
            now = time.monotonic()
            if now >= deadline:
                seen.expired_at = now
                break
            sock.settimeout(max(0.01, min(deadline, stop_at) - now))
            try:
                payload, pid = _recv_with_pid(sock)
            except TimeoutError:
                continue
            if pid != proc.pid:  # NotifyAccess=main: only the main process counts
                continue
            seen.messages.append((time.monotonic(), pid, payload))
            lines = payload.splitlines()
            if "READY=1" in lines and seen.values("READY") == ["1"]:
                deadline = time.monotonic() + WATCHDOG_SEC  # start-up complete: armed
                stop_at = time.monotonic() + observe_seconds
            if "WATCHDOG=1" in lines and seen.values("READY"):
                deadline = time.monotonic() + WATCHDOG_SEC
            on_message(seen)
    finally:
        sock.close()
    return seen, proc


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGABRT)  # systemd's WatchdogSignal=
    return proc.wait(timeout=10)


@pytest.mark.timeout(180)
def test_a_main_loop_that_stops_pinging_is_noticed(tmp_path: Path, tiny_model_dir: Path) -> None:
    db = tmp_path / "state" / "marginwatch.db"
    lock: list[sqlite3.Connection] = []
    pings_before_stuck = 2

    def hold_the_write_lock(seen: Supervision) -> None:
        if not lock and len(seen.values("WATCHDOG")) >= pings_before_stuck:
            con = sqlite3.connect(db, timeout=30, isolation_level=None)
            con.execute("BEGIN IMMEDIATE")  # every writer of the daemon now waits on it
            lock.append(con)
            seen.stuck_at = time.monotonic()

    try:
        seen, proc = _supervise(tmp_path, tiny_model_dir, observe_seconds=20.0,
                                on_message=hold_the_write_lock)
        try:
            assert lock, f"never got as far as {pings_before_stuck} pings; saw {seen.messages}"
            assert seen.expired_at is not None, f"watchdog never expired; saw {seen.messages}"
            assert proc.poll() is None, "the process should be hung, not exited"
            assert seen.values("READY") == ["1"]
            assert len(seen.values("WATCHDOG")) >= pings_before_stuck
            assert any(s.startswith("watching") for s in seen.values("STATUS"))
            last_ping = max(t for t, _, p in seen.messages if "WATCHDOG=1" in p.splitlines())
            gap = seen.expired_at - last_ping
            assert WATCHDOG_SEC <= gap < WATCHDOG_SEC + 1.0
            print(f"watchdog expired {gap:.2f} s after the last ping "
                  f"({seen.expired_at - seen.stuck_at:.2f} s after the database lock)")
        finally:
            assert _stop(proc) == -signal.SIGABRT
    finally:
        for con in lock:
            con.close()


@pytest.mark.timeout(180)
def test_a_pinging_main_loop_is_never_declared_dead(tmp_path: Path, tiny_model_dir: Path) -> None:
    seen, proc = _supervise(tmp_path, tiny_model_dir, observe_seconds=2 * WATCHDOG_SEC)
    try:
        assert seen.values("READY") == ["1"], seen.messages
        assert seen.expired_at is None
        assert proc.poll() is None
        pings = seen.values("WATCHDOG")
        # interval = WatchdogSec / 2: about 2 pings per WatchdogSec
        assert len(pings) >= 3, seen.messages
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_real_daemon_pings_and_a_frozen_one_is_noticed(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """``marginwatch run`` under WATCHDOG_USEC: pings after READY=1; frozen, it stops."""
    watch = tmp_path / "export"
    work = tmp_path / "state"
    watch.mkdir()
    work.mkdir()
    write_image(watch / "case1" / "a.tif", seed=1)
    usec = str(int(WATCHDOG_SEC * 1_000_000))
    with Daemon(work, watch, tiny_model_dir) as daemon:
        daemon.start(extra_env={"WATCHDOG_USEC": usec})
        daemon.wait_ready(timeout=120)

        def pings() -> int:
            return daemon.notifications().count("WATCHDOG=1")

        time.sleep(2 * WATCHDOG_SEC)  # a rate: how many pings in 2 x WatchdogSec
        alive_pings = pings()
        # interval WatchdogSec/2 over 2 x WatchdogSec: about 4 pings
        assert alive_pings >= 3, daemon.notifications()
        assert any(m.startswith("STATUS=") for m in daemon.notifications())

        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGSTOP)  # a main loop that makes no progress
        try:
            time.sleep(0.2)  # a datagram already in flight
            frozen_from = pings()
            pinged = wait_until(lambda: pings() > frozen_from, timeout=1.5 * WATCHDOG_SEC)
            assert not pinged, "no ping may arrive from a frozen daemon"
        finally:
            daemon.proc.send_signal(signal.SIGCONT)
        assert wait_until(lambda: pings() > frozen_from, timeout=2 * WATCHDOG_SEC), (
            "pings resume once it runs again")
        assert daemon.stop(signal.SIGTERM) == 0, daemon.log()
        assert "STOPPING=1" in daemon.notifications()
