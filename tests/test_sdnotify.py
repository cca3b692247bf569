"""The sd_notify client against real AF_UNIX datagram sockets (path and abstract)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from pathlib import Path

import pytest
from marginwatch.daemon.sdnotify import Notifier


class Listener:
    """A bound datagram socket standing in for systemd's notify socket."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value
        self.sock.settimeout(5.0)

    def recv(self) -> str:
        return self.sock.recv(4096).decode()

    def nothing_pending(self) -> bool:
        self.sock.settimeout(0.05)
        try:
            self.sock.recv(4096)
        except TimeoutError:
            return True
        finally:
            self.sock.settimeout(5.0)
        return False


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify")
        sock.bind(address)
        env_value = address
    else:
        name = f"marginwatch-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        env_value = "@" + name
    try:
        yield Listener(sock, env_value)
    finally:
        sock.close()


def test_messages_arrive_as_systemd_reads_them(listener: Listener) -> None:
    with Notifier.from_environ({"NOTIFY_SOCKET": listener.env_value}) as notifier:
        assert notifier.enabled
        assert notifier.ready(status="watching") is True
        assert listener.recv() == "READY=1\nSTATUS=watching\n"
        notifier.status("queue 3\nprocessed 7")
        assert listener.recv() == "STATUS=queue 3 processed 7\n"
        notifier.watchdog()
        assert listener.recv() == "WATCHDOG=1\n"
        notifier.stopping()
        assert listener.recv() == "STOPPING=1\n"
        notifier.extend_timeout(2.5)
        assert listener.recv() == "EXTEND_TIMEOUT_USEC=2500000\n"
        notifier.watchdog_trigger()
        assert listener.recv() == "WATCHDOG=trigger\n"


def test_reloading_carries_monotonic_usec(listener: Listener) -> None:
    notifier = Notifier(listener.env_value, monotonic_usec=lambda: 123456789)
    notifier.reloading(status="reloading configuration")
    assert listener.recv() == (
        "RELOADING=1\nMONOTONIC_USEC=123456789\nSTATUS=reloading configuration\n"
    )
    notifier.close()


def test_real_monotonic_clock_is_used_by_default(listener: Listener) -> None:
    import time

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    with Notifier(listener.env_value) as notifier:
        notifier.reloading()
        fields = dict(line.split("=", 1) for line in listener.recv().splitlines())
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert before <= int(fields["MONOTONIC_USEC"]) <= after


@pytest.mark.parametrize(
    ("usec", "interval", "timeout"),
    [("30000000", 15.0, 30.0), ("1000000", 0.5, 1.0), ("5", 2.5e-6, 5e-6)],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    usec: str, interval: float, timeout: float
) -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": usec}
    notifier = Notifier.from_environ(env)
    assert notifier.watchdog_interval_seconds == pytest.approx(interval)
    assert notifier.watchdog_timeout_seconds == pytest.approx(timeout)


def test_watchdog_pid_must_name_this_process() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000000"}
    mine = Notifier.from_environ({**env, "WATCHDOG_PID": str(os.getpid())})
    assert mine.watchdog_interval_seconds == 0.5
    other = Notifier.from_environ({**env, "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.watchdog_interval_seconds is None
    injected = Notifier.from_environ({**env, "WATCHDOG_PID": "4242"}, pid=4242)
    assert injected.watchdog_interval_seconds == 0.5


@pytest.mark.parametrize(
    "env",
    [
        {"NOTIFY_SOCKET": "@x"},
        {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": ""},
        {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "0"},
        {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "-5"},
        {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "soon"},
        {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "me"},
        {"WATCHDOG_USEC": "1000000"},  # a watchdog without a socket to ping is off
    ],
)
def test_watchdog_off(env: dict[str, str]) -> None:
    notifier = Notifier.from_environ(env)
    assert notifier.watchdog_interval_seconds is None
    assert notifier.watchdog_timeout_seconds is None


def test_unset_socket_is_a_no_op(tmp_path: Path) -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.status("x") is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    assert notifier.reloading() is False
    assert notifier.set_watchdog_timeout(60) is False
    notifier.close()
    assert not Notifier.from_environ({"NOTIFY_SOCKET": ""}).enabled


def test_from_environ_defaults_to_os_environ(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", listener.env_value)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    with Notifier.from_environ() as notifier:
        assert notifier.watchdog_interval_seconds == 2.0
        notifier.watchdog()
        assert listener.recv() == "WATCHDOG=1\n"


def test_set_watchdog_timeout_and_restore(listener: Listener) -> None:
    env = {"NOTIFY_SOCKET": listener.env_value, "WATCHDOG_USEC": "30000000"}
    with Notifier.from_environ(env) as notifier:
        notifier.set_watchdog_timeout(300)
        assert listener.recv() == "WATCHDOG_USEC=300000000\n"
        notifier.set_watchdog_timeout(None)
        assert listener.recv() == "WATCHDOG_USEC=30000000\n"
        assert notifier.watchdog_interval_seconds == 15.0


def test_send_failure_never_raises_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = str(tmp_path / "nobody-listens")
    with caplog.at_level(logging.DEBUG, logger="marginwatch.daemon.sdnotify"):
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": missing, "WATCHDOG_USEC": "100"})
        assert notifier.enabled
        for _ in range(5):
            assert notifier.watchdog() is False
        notifier.close()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "cannot notify systemd" in warnings[0].getMessage()


def test_listener_appearing_later_is_reached(tmp_path: Path) -> None:
    address = str(tmp_path / "late")
    with Notifier(address) as notifier:
        assert notifier.ready() is False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(address)
        sock.settimeout(5.0)
        try:
            assert notifier.ready() is True
            assert sock.recv(100) == b"READY=1\n"
        finally:
            sock.close()


def test_unsupported_socket_kind_disables(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="marginwatch.daemon.sdnotify"):
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert "disabled" in caplog.text


def test_concurrent_senders_each_send_whole_datagrams(listener: Listener) -> None:
    """Four threads send at once: no hang, no exception, every accepted message whole.

    Sends never block, so senders can outpace the reader and fill its queue
    (``net.unix.max_dgram_qlen``, often 10): those sends are dropped and return False.
    The contract is what systemd relies on: what was accepted arrives, whole, once.
    (An earlier version retried every refused send forever while its reader gave up
    after a 5 s ``recv`` timeout; once the reader thread had died of that timeout the
    senders spun on a full queue until pytest's timeout.)
    """
    notifier = Notifier(listener.env_value)
    per_thread = 25
    accepted: list[str] = []
    accepted_lock = threading.Lock()
    received: list[str] = []
    senders_done = threading.Event()

    def send(tag: str) -> None:
        for i in range(per_thread):
            text = f"{tag} {i}"
            if notifier.status(text):  # refused (queue full) is allowed: dropped, not retried
                with accepted_lock:
                    accepted.append(f"STATUS={text}\n")

    def receive() -> None:
        listener.sock.settimeout(0.2)
        while True:
            try:
                received.append(listener.sock.recv(4096).decode())
            except TimeoutError:
                if senders_done.is_set():
                    return  # senders finished and the queue stayed empty for 0.2 s

    receiver = threading.Thread(target=receive, name="receiver")
    receiver.start()
    threads = [threading.Thread(target=send, args=(f"t{n}",), name=f"s{n}") for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive(), "a sender blocked"
    senders_done.set()
    receiver.join(timeout=30)
    assert not receiver.is_alive()
    assert accepted, "no message was accepted at all"
    assert sorted(received) == sorted(accepted)  # whole datagrams, each accepted one once
    assert len(set(received)) == len(received)
    notifier.close()


def test_receiver_that_never_reads_does_not_block_the_sender(
    listener: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    """A full notify queue (systemd not reading) drops messages; the sender returns at once."""
    import time

    results = []
    with caplog.at_level(logging.DEBUG, logger="marginwatch.daemon.sdnotify"):
        with Notifier(listener.env_value) as notifier:
            started = time.monotonic()
            for i in range(500):
                results.append(notifier.status(f"queue {i}"))
            elapsed = time.monotonic() - started
    assert elapsed < 5.0  # a blocking send would wait here forever
    assert results[0] is True
    assert results.count(False) > 0  # the queue filled: later sends were dropped
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "receive queue is full" in warnings[0].getMessage()
    # What was accepted is queued whole, in order.
    sent = [f"STATUS=queue {i}\n" for i, ok in enumerate(results) if ok]
    assert [listener.recv() for _ in sent] == sent
    assert listener.nothing_pending()


def test_long_status_is_truncated(listener: Listener) -> None:
    with Notifier(listener.env_value) as notifier:
        notifier.status("x" * 5000)
        assert listener.recv() == "STATUS=" + "x" * 1024 + "\n"
