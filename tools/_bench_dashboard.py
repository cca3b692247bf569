"""The dashboard's live loop, run beside the benchmark's daemon: when is a result on screen?

:class:`DashboardProbe` runs the real loop (``marginwatch.daemon.dashboard.live_loop``:
the same :class:`~marginwatch.daemon.dashboard.Source`, change waker, fallback period
and rendering as ``marginwatch dashboard``) in a thread, with the shipped dashboard
configuration, on a console that writes into memory. Instead of ``rich.live.Live`` it
hands the loop a recorder that prints each frame and then notes, on CLOCK_REALTIME,
the first frame in which each image's row shows a final state. Commit -> visible is
that time minus the commit time the benchmark measured.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["DashboardProbe"]

FINAL = ("done", "duplicate", "failed")


class DashboardProbe:
    """The dashboard loop on ``db_path`` in a thread; ``visible[rel_path]`` = first seen."""

    def __init__(self, db_path: Path, *, rows: int = 60) -> None:
        from marginwatch.daemon.dashboard import Source

        probe = self

        class _Source(Source):
            last: Any = None

            def snapshot(self) -> Any:
                shot = super().snapshot()
                _Source.last = shot
                return shot

        self.visible: dict[str, float] = {}
        self.frames = 0
        self._source = _Source(str(db_path), recent_rows=rows)
        self._source_class = _Source
        self._stop = threading.Event()

        class _Recorder:  # stands in for rich.live.Live: print the frame, note what it shows
            def __init__(self, renderable: Any, console: Any, **_: Any) -> None:
                self.console = console
                self.update(renderable)

            def __enter__(self) -> _Recorder:
                return self

            def __exit__(self, *exc: object) -> None:
                return None

            def update(self, renderable: Any, refresh: bool = True) -> None:
                self.console.file.seek(0)
                self.console.file.truncate()
                self.console.print(renderable)
                probe._on_frame(time.time())

        self._recorder = _Recorder
        self._thread = threading.Thread(target=self._run, name="bench-dashboard", daemon=True)

    def _on_frame(self, now: float) -> None:
        self.frames += 1
        shot = self._source_class.last
        for row in getattr(shot, "recent", None) or ():
            if row.state in FINAL:
                self.visible.setdefault(str(row.rel_path), now)

    def _run(self) -> None:
        from marginwatch.daemon.dashboard import live_loop
        from marginwatch.engine.config import load_config
        from rich.console import Console

        config = load_config(None, environ={})  # the shipped dashboard settings
        console = Console(file=io.StringIO(), width=140, height=60, force_terminal=True,
                          color_system="truecolor")
        live_loop(self._source, config, console, self._stop.is_set, self._recorder)

    def start(self) -> DashboardProbe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self._source.close()
