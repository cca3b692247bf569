"""The systemd notification protocol (``sd_notify``), client side.

systemd starts a ``Type=notify`` service with ``NOTIFY_SOCKET`` naming an ``AF_UNIX``
datagram socket (a path, or an abstract name written ``@name``). The service sends
newline-separated ``KEY=value`` assignments to it, one datagram per message:

- ``READY=1`` once it is serving (the unit becomes *active*);
- ``STATUS=...`` a one-line human status (``systemctl status`` shows it);
- ``WATCHDOG=1`` at least every ``WATCHDOG_USEC`` microseconds, else systemd kills
  and (with ``Restart=on-failure``) restarts it;
- ``RELOADING=1`` + ``MONOTONIC_USEC=...`` at the start of a reload, ``READY=1`` after;
- ``STOPPING=1`` when shutting down; ``EXTEND_TIMEOUT_USEC=...`` to ask for more time;
- ``WATCHDOG_USEC=...`` to change the watchdog deadline. systemd activates the
  watchdog when start-up completes (READY=1); start-up itself is bounded by
  ``TimeoutStartSec=``, which ``EXTEND_TIMEOUT_USEC`` can extend.

Without ``NOTIFY_SOCKET`` (a foreground run, tests) every call is a no-op. A send that
fails is logged once and otherwise ignored: notification is advisory, and the service
must never stop because systemd is not listening. Sends never block: a datagram socket's
``sendto`` waits while the receiver's queue is full (``net.unix.max_dgram_qlen``), which
once froze the daemon's main loop (no heartbeat, no claims) on a ``STATUS=`` line.
systemd reads its notify socket continuously, so a full queue means it is not reading:
the message is dropped (``EAGAIN``), logged once, and the call returns False. Calls are
thread-safe.

Usage::

    notifier = Notifier.from_environ()
    ...                                   # load the model, start the first scan
    notifier.ready(status="watching")
    while running:
        notifier.watchdog()               # every notifier.watchdog_interval_seconds
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

__all__ = ["Notifier"]

logger = logging.getLogger(__name__)

_MAX_STATUS_CHARS = 1024


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _socket_address(raw: str) -> str | None:
    """``NOTIFY_SOCKET`` -> an address for ``sendto``; None for kinds not supported here."""
    if raw.startswith("@"):
        return "\0" + raw[1:]  # abstract namespace socket
    if raw.startswith("/"):
        return raw
    return None  # e.g. "vsock:CID:PORT" (systemd 253+); not used on a theatre machine


class Notifier:
    """Sends sd_notify messages to systemd; a no-op when ``address`` is None.

    ``watchdog_usec`` is the service's ``WATCHDOG_USEC`` (None: no watchdog).
    ``monotonic_usec`` is injectable for tests (``MONOTONIC_USEC`` in ``reloading()``).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        watchdog_usec: int | None = None,
        monotonic_usec: Callable[[], int] = _monotonic_usec,
    ) -> None:
        self._raw_address = address
        self._address = _socket_address(address) if address else None
        if address and self._address is None:
            logger.warning(
                "NOTIFY_SOCKET=%r is not an AF_UNIX path or @abstract name; "
                "systemd notifications are disabled",
                address,
            )
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._monotonic_usec = monotonic_usec
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._failed_once = False

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] | None = None, *, pid: int | None = None
    ) -> Notifier:
        """Build from ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``.

        ``WATCHDOG_PID``, when set, must name this process (``pid``, default
        ``os.getpid()``); otherwise the watchdog settings belong to another process
        (a parent that exec'd us without clearing them) and are ignored.
        """
        env = os.environ if environ is None else environ
        own_pid = os.getpid() if pid is None else pid
        address = env.get("NOTIFY_SOCKET") or None
        watchdog_usec = _parse_watchdog(env, own_pid)
        return cls(address, watchdog_usec=watchdog_usec)

    # --- what the service asks -------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """True when there is a socket to notify (systemd started us as Type=notify)."""
        return self._address is not None

    @property
    def watchdog_interval_seconds(self) -> float | None:
        """How often to call :meth:`watchdog`: half of ``WATCHDOG_USEC``; None when off."""
        if self._watchdog_usec is None or not self.enabled:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    @property
    def watchdog_timeout_seconds(self) -> float | None:
        """``WATCHDOG_USEC`` in seconds: systemd's deadline between two pings; None when off."""
        if self._watchdog_usec is None or not self.enabled:
            return None
        return self._watchdog_usec / 1_000_000

    # --- messages ----------------------------------------------------------------------

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (and a STATUS line if given): start-up is complete."""
        return self.notify("READY=1", status=status)

    def status(self, text: str) -> bool:
        """``STATUS=text``; newlines become spaces (a newline ends an assignment)."""
        return self.notify(status=text)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the main loop is alive."""
        return self.notify("WATCHDOG=1")

    def watchdog_trigger(self) -> bool:
        """``WATCHDOG=trigger``: ask systemd to treat the watchdog as expired now."""
        return self.notify("WATCHDOG=trigger")

    def reloading(self, status: str | None = None) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC`` (required by ``Type=notify-reload``)."""
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={self._monotonic_usec()}", status=status)

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        return self.notify("STOPPING=1", status=status)

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC``: the current start/stop step needs ``seconds`` more."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")

    def set_watchdog_timeout(self, seconds: float | None) -> bool:
        """``WATCHDOG_USEC=...``: change systemd's watchdog deadline; None restores the unit's.

        For a step after READY=1 that cannot ping for longer than WatchdogSec (a model
        swapped in on reload, a TensorRT engine build): widen the deadline first and
        restore it after. The ping interval (:attr:`watchdog_interval_seconds`) stays
        the unit's.
        """
        if self._watchdog_usec is None:
            return False
        usec = self._watchdog_usec if seconds is None else max(1, int(seconds * 1_000_000))
        return self.notify(f"WATCHDOG_USEC={usec}")

    def notify(self, *assignments: str, status: str | None = None) -> bool:
        """Send ``assignments`` (``KEY=value`` strings) as one datagram.

        Returns True when a datagram was sent, False when disabled or the send failed
        (including a full receive queue: the message is dropped, never waited for).
        Never raises for a send failure and never blocks.
        """
        if self._address is None:
            return False
        lines = list(assignments)
        if status is not None:
            lines.append("STATUS=" + _one_line(status))
        if not lines:
            return False
        payload = ("\n".join(lines) + "\n").encode("utf-8", "replace")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                    )
                # MSG_DONTWAIT: a full receiver queue gives EAGAIN instead of blocking.
                self._sock.sendto(payload, socket.MSG_DONTWAIT, self._address)
            except BlockingIOError as exc:
                self._log_failure(exc, "its receive queue is full (systemd is not reading)")
                return False
            except OSError as exc:
                self._log_failure(exc)
                return False
        return True

    def close(self) -> None:
        """Close the socket (a later message opens a new one)."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Notifier(address={self._raw_address!r}, "
            f"watchdog_interval_seconds={self.watchdog_interval_seconds!r})"
        )

    def _log_failure(self, exc: OSError, why: str | None = None) -> None:
        reason = why or str(exc)
        if not self._failed_once:
            self._failed_once = True
            logger.warning(
                "cannot notify systemd at NOTIFY_SOCKET=%r: %s; message dropped "
                "(further failures are not logged)",
                self._raw_address,
                reason,
            )
        else:
            logger.debug("cannot notify systemd: %s", reason)


def _one_line(text: str) -> str:
    flat = " ".join(text.splitlines())
    return flat[:_MAX_STATUS_CHARS]


def _parse_watchdog(env: Mapping[str, str], own_pid: int) -> int | None:
    raw = env.get("WATCHDOG_USEC")
    if not raw:
        return None
    watchdog_pid = env.get("WATCHDOG_PID")
    if watchdog_pid:
        try:
            if int(watchdog_pid) != own_pid:
                return None
        except ValueError:
            logger.warning("WATCHDOG_PID=%r is not a process id; watchdog disabled", watchdog_pid)
            return None
    try:
        usec = int(raw)
    except ValueError:
        logger.warning("WATCHDOG_USEC=%r is not an integer; watchdog disabled", raw)
        return None
    if usec <= 0:
        logger.warning("WATCHDOG_USEC=%r is not positive; watchdog disabled", raw)
        return None
    return usec
