"""Process signals as flags the main loop reads.

SIGTERM and SIGINT ask for a stop (stop intake, finish or release in-flight jobs,
record the stop, exit 0); SIGHUP asks for a reload of the settings that can change
live. Handlers only set events: all work happens in the main loop. Installing must
happen in the main thread (a Python rule); :meth:`SignalFlags.restore` puts the
previous handlers back, so tests can use the flags in-process.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

__all__ = ["SignalFlags"]


class SignalFlags:
    """``stop`` and ``reload`` events set by SIGTERM/SIGINT and SIGHUP."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.reload = threading.Event()
        self.stop_reason: str | None = None
        self._previous: dict[int, Any] = {}

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        if self.stop_reason is None:
            self.stop_reason = signal.Signals(signum).name
        self.stop.set()

    def _on_reload(self, _signum: int, _frame: FrameType | None) -> None:
        self.reload.set()

    def install(self) -> SignalFlags:
        for signum, handler in (
            (signal.SIGTERM, self._on_stop),
            (signal.SIGINT, self._on_stop),
            (signal.SIGHUP, self._on_reload),
        ):
            self._previous[signum] = signal.signal(signum, handler)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def request_stop(self, reason: str) -> None:
        """Ask for a stop from code (tests, a fatal error in a worker)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.stop.set()

    def __enter__(self) -> SignalFlags:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()
