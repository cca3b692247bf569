"""The watchdog path end to end, with this test playing systemd.

The test binds the notify socket (SO_PASSCRED, so each datagram carries its sender's
pid, which systemd checks for NotifyAccess=main), starts a real process with
NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID set as systemd sets them, and runs the
watchdog as systemd does: activated when start-up completes (READY=1), reset by each
WATCHDOG=1, expired when no ping arrives within WATCHDOG_USEC. The process is a small main loop
on :class:`Notifier` that pings a given number of times and then hangs (a stuck main
loop); a healthy one keeps pinging and is never declared dead.
"""

from __future__ import annotations

import array
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

WATCHDOG_SEC = 2.0  # the unit's WatchdogSec=, shortened for the test

MAIN_LOOP = textwrap.dedent(
    """
    import sys, time
    from marginwatch.daemon.sdnotify import Notifier

    pings = int(sys.argv[1])
    notifier = Notifier.from_environ()
    assert notifier.watchdog_interval_seconds is not None, "watchdog not enabled"
    notifier.status("loading model")
    notifier.watchdog()
    notifier.ready(status="watching: queue 0, processed 0")
    for i in range(pings):
        notifier.watchdog()
        notifier.status(f"watching: queue 0, processed {i + 1}")
        time.sleep(notifier.watchdog_interval_seconds)
    notifier.status("main loop stuck")  # and no more pings: the loop hangs here
    time.sleep(120)
    """
)


@dataclass
class Supervision:
    """What the fake systemd saw."""

    messages: list[tuple[float, int, str]] = field(default_factory=list)
    expired_at: float | None = None
    started_at: float = 0.0

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


def _supervise(
    tmp_path: Path, pings: int, *, observe_seconds: float
) -> tuple[Supervision, subprocess.Popen[bytes]]:
    address = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind(address)
    script = tmp_path / "main_loop.py"
    script.write_text(MAIN_LOOP)
    env = {
        **os.environ,
        "NOTIFY_SOCKET": address,
        "WATCHDOG_USEC": str(int(WATCHDOG_SEC * 1_000_000)),
    }
    env.pop("WATCHDOG_PID", None)
    # systemd sets WATCHDOG_PID to the pid it forks; `exec` keeps the shell's pid.
    command = f'WATCHDOG_PID=$$; export WATCHDOG_PID; exec "{sys.executable}" "{script}" {pings}'
    seen = Supervision()
    proc = subprocess.Popen(["/bin/sh", "-c", command], env=env)
    try:
        seen.started_at = time.monotonic()
        start_timeout = seen.started_at + 30.0  # TimeoutStartSec=, until READY=1
        deadline = start_timeout
        stop_at = seen.started_at + observe_seconds
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
            if "WATCHDOG=1" in lines and seen.values("READY"):
                deadline = time.monotonic() + WATCHDOG_SEC
    finally:
        sock.close()
    return seen, proc


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGABRT)  # systemd's WatchdogSignal=
    return proc.wait(timeout=10)


@pytest.mark.timeout(60)
def test_a_main_loop_that_stops_pinging_is_noticed(tmp_path: Path) -> None:
    pings = 3
    seen, proc = _supervise(tmp_path, pings, observe_seconds=20.0)
    try:
        assert seen.expired_at is not None, f"watchdog never expired; saw {seen.messages}"
        assert proc.poll() is None, "the process should be hung, not exited"
        assert seen.values("READY") == ["1"]
        assert len(seen.values("WATCHDOG")) == pings + 1  # one before READY=1, then the loop
        statuses = seen.values("STATUS")
        assert statuses[0] == "loading model"
        assert f"watching: queue 0, processed {pings}" in statuses
        assert statuses[-1] == "main loop stuck"
        last_ping = max(t for t, _, p in seen.messages if "WATCHDOG=1" in p.splitlines())
        gap = seen.expired_at - last_ping
        assert WATCHDOG_SEC <= gap < WATCHDOG_SEC + 1.0
        print(f"watchdog expired {gap:.2f} s after the last of {pings + 1} pings")
    finally:
        assert _stop(proc) == -signal.SIGABRT


@pytest.mark.timeout(60)
def test_a_pinging_main_loop_is_never_declared_dead(tmp_path: Path) -> None:
    seen, proc = _supervise(tmp_path, pings=10_000, observe_seconds=2 * WATCHDOG_SEC)
    try:
        assert seen.expired_at is None
        assert proc.poll() is None
        pings = seen.values("WATCHDOG")
        # interval = WatchdogSec / 2: about 2 pings per WatchdogSec
        assert len(pings) >= 3, seen.messages
        assert seen.values("READY") == ["1"]
    finally:
        _stop(proc)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_real_daemon_pings_and_a_frozen_one_is_noticed(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """``marginwatch run`` under WATCHDOG_USEC: pings after READY=1; frozen, it stops."""
    from daemon_support import Daemon, write_image

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

        time.sleep(2 * WATCHDOG_SEC)
        alive_pings = pings()
        # interval WatchdogSec/2 over 2 x WatchdogSec: about 4 pings
        assert alive_pings >= 3, daemon.notifications()
        assert any(m.startswith("STATUS=") for m in daemon.notifications())

        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGSTOP)  # a main loop that makes no progress
        try:
            time.sleep(0.2)  # a datagram already in flight
            frozen_from = pings()
            time.sleep(1.5 * WATCHDOG_SEC)
            assert pings() == frozen_from, "no ping may arrive from a frozen daemon"
        finally:
            daemon.proc.send_signal(signal.SIGCONT)
        time.sleep(WATCHDOG_SEC)
        assert pings() > frozen_from, "pings resume once it runs again"
        assert daemon.stop(signal.SIGTERM) == 0, daemon.log()
        assert "STOPPING=1" in daemon.notifications()
