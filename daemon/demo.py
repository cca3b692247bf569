"""``marginwatch demo`` (``make demo``): the whole system on one machine, in one command.

    demo/export/<case>/scan-NNN.tif   written by a simulated scanner (temp name, rename)
    demo/state/marginwatch.db         embedded SQLite, fresh for each run
    demo/state/marginwatch.toml       the daemon's configuration
    demo/state/daemon.log             the daemon's log (image ids, never file names)

Steps: take the bundled synthetic demo model (``models/demo``, trained on synthetic
scans only and marked ``synthetic_demo``); start the real daemon (``marginwatch run``)
as a child process; run the simulated scanner; show the dashboard until Ctrl-C (or,
with ``--duration``, for that long, then print a summary). Ctrl-C or SIGTERM stop the
scanner, then the daemon (SIGTERM, then SIGKILL after a grace period); the daemon also
gets SIGTERM if this process dies (``PR_SET_PDEATHSIG``), so no daemon is left behind.

This process stays free of torch: the daemon does the assessing.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
from marginwatch.engine.errors import DaemonError, MarginwatchError
from marginwatch.models import demo_model_dir

from ._scanner import SimulatedScanner

__all__ = ["DemoSummary", "demo_root", "run_demo"]

logger = logging.getLogger(__name__)

# The scans the demo model was trained on (docs/training.md): 1024 px at the synthetic
# development centre's 1 um/px, grey profile; one 128 px model field at 8 um/px each.
DEMO_SCAN_PX = 1024
START_TIMEOUT_SECONDS = 120.0
STOP_GRACE_SECONDS = 20.0

DAEMON_SETTINGS: dict[str, Any] = {
    "observer": "inotify",
    "settle_seconds": 0.3,
    "stable_polls": 1,
    "poll_interval_seconds": 0.2,
    "rescan_seconds": 30.0,
    "heartbeat_seconds": 1.0,
    "max_attempts": 2,
    "retry_delay_seconds": 1.0,
    "max_batch_wait_ms": 10.0,
    "shutdown_seconds": 10.0,
}
ENGINE_SETTINGS: dict[str, Any] = {"backend": "auto", "precision": "fp32"}


def demo_root() -> Path:
    """``<repository>/demo`` when running from a checkout, else ``./demo``."""
    repo = Path(__file__).resolve().parents[1]
    if (repo / "pyproject.toml").is_file() and (repo / "daemon").is_dir():
        return repo / "demo"
    return Path.cwd() / "demo"


def _demo_model() -> Path:
    """The bundled synthetic demo model (``models/demo``, package data), or a clear error."""
    folder = demo_model_dir()
    if not (folder / "model.json").is_file():
        raise DaemonError(
            f"{folder}: the synthetic demo model is missing (no model.json); "
            "reinstall marginwatch, or run the demo from a source checkout"
        )
    return folder


# --- the daemon child -------------------------------------------------------------------


def write_demo_config(path: Path, *, export: Path, state: Path, model: Path) -> Path:
    daemon = {"watch_dir": str(export), "state_dir": str(state), "model_dir": str(model),
              **DAEMON_SETTINGS}
    header = "# written by `marginwatch demo`; research use, synthetic data\n"
    path.write_text(header + tomli_w.dumps({"daemon": daemon, "engine": ENGINE_SETTINGS}))
    return path


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _marginwatch_command() -> list[str]:
    script = Path(sys.executable).with_name("marginwatch")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from marginwatch.daemon.cli import main; main()"]


class DaemonChild:
    """``marginwatch run`` as a child process, stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonChild:
        env = {k: v for k, v in os.environ.items() if k != "MARGINWATCH_CONFIG"}
        env.pop("NOTIFY_SOCKET", None)
        env.setdefault("OMP_NUM_THREADS", "2")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [*_marginwatch_command(), "run", "--config", str(self.config)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True,  # Ctrl-C reaches the demo, which stops the daemon in order
                preexec_fn=_die_with_parent,
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 8) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, grace_seconds: float = STOP_GRACE_SECONDS) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_seconds)
            except subprocess.TimeoutExpired:
                logger.warning("daemon did not stop within %.0fs; killing it", grace_seconds)
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


# --- the run ----------------------------------------------------------------------------


@dataclass
class DemoSummary:
    files: Counter[str]
    assessed: int
    duplicate: int
    failed: int
    pending: int
    alerts: Counter[str]
    tumour_alerted: tuple[int, int]  # (tumour scans with a tumour alert, tumour scans assessed)
    benign_alerted: tuple[int, int]  # (benign scans with a tumour alert, benign scans assessed)
    file_to_alert_seconds: list[float]
    file_to_result_seconds: list[float]
    daemon_exit: int | None
    model: str

    def lines(self) -> list[str]:
        def stats(values: list[float]) -> str:
            if not values:
                return "n/a"
            return (f"median {statistics.median(values):.1f} s, max {max(values):.1f} s "
                    f"(n={len(values)})")

        files = ", ".join(f"{n} {kind}" for kind, n in sorted(self.files.items())) or "none"
        alerts = ", ".join(f"{n} {kind}" for kind, n in sorted(self.alerts.items())) or "none"
        return [
            "marginwatch demo summary (synthetic data; research use, not a diagnosis)",
            f"  model:          {self.model}",
            f"  files written:  {sum(self.files.values())} ({files})",
            f"  assessed:       {self.assessed}  duplicate: {self.duplicate}  "
            f"failed (not assessed): {self.failed}  still queued: {self.pending}",
            f"  alerts:         {alerts}",
            f"  truth:          {self.tumour_alerted[0]} of {self.tumour_alerted[1]} tumour "
            f"scans raised a tumour alert; {self.benign_alerted[0]} of {self.benign_alerted[1]} "
            "benign scans did",
            f"  file -> alert:  {stats(self.file_to_alert_seconds)}",
            f"  file -> result: {stats(self.file_to_result_seconds)}",
            f"  daemon exit:    {self.daemon_exit}",
        ]


def _wait_running(db: Path, daemon: DaemonChild, stop: threading.Event) -> None:
    from marginwatch.storage import Store

    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline and not stop.is_set():
        if not daemon.alive():
            raise DaemonError(f"the daemon exited during start-up; its log ends:\n"
                              f"{daemon.log_tail()}")
        if db.exists():
            try:
                with Store.open(db, readonly=True, busy_timeout_seconds=1.0) as store:
                    beat = store.read_heartbeat()
                if beat is not None and beat.status == "running":
                    return
            except MarginwatchError:
                pass  # schema being created
        stop.wait(0.3)
    if not stop.is_set():
        raise DaemonError(f"the daemon did not start within {START_TIMEOUT_SECONDS:.0f}s; "
                          f"log: {daemon.log}")


def _summary(db: Path, scanner: SimulatedScanner, daemon_exit: int | None,
             model: str) -> DemoSummary:
    from marginwatch.storage import Store

    landed = {f.rel_path: f.landed_at for f in scanner.files()}
    with Store.open(db, readonly=True) as store:
        rows = store.list_images()
        alerts = store.alerts()
    by_state = Counter(r.state for r in rows)
    to_result = [(r.finished_at - landed[r.rel_path]).total_seconds()
                 for r in rows if r.finished_at is not None and r.rel_path in landed]
    to_alert = [(a.raised_at - landed[a.rel_path]).total_seconds()
                for a in alerts if a.rel_path in landed]
    assessed = {r.rel_path for r in rows if r.state == "done"}
    tumour_alert = {a.rel_path for a in alerts if a.kind == "tumour-at-margin"}

    def alerted(kind: str) -> tuple[int, int]:
        """(scans of ``kind`` with a tumour alert, scans of ``kind`` assessed): the
        simulated scanner knows the truth of each file it wrote."""
        written = {f.rel_path for f in scanner.files() if f.kind == kind} & assessed
        return len(written & tumour_alert), len(written)

    return DemoSummary(
        files=Counter(f.kind for f in scanner.files()),
        tumour_alerted=alerted("tumour"), benign_alerted=alerted("benign"),
        assessed=by_state.get("done", 0), duplicate=by_state.get("duplicate", 0),
        failed=by_state.get("failed", 0),
        pending=by_state.get("pending", 0) + by_state.get("processing", 0),
        alerts=Counter(a.kind for a in alerts),
        file_to_alert_seconds=to_alert, file_to_result_seconds=to_result,
        daemon_exit=daemon_exit, model=model,
    )


def _drain(db: Path, scanner: SimulatedScanner, stop: threading.Event,
           timeout: float = 30.0) -> None:
    """After the last file: wait until every landed file has a final state."""
    from marginwatch.storage import Store

    deadline = time.monotonic() + timeout
    expected = {f.rel_path for f in scanner.files()}
    while time.monotonic() < deadline and not stop.is_set():
        with Store.open(db, readonly=True, busy_timeout_seconds=1.0) as store:
            rows = store.list_images()
        final = {r.rel_path for r in rows if r.state in ("done", "duplicate", "failed")}
        if expected <= final:
            return
        stop.wait(0.5)


def run_demo(
    *,
    duration_seconds: float | None = None,
    root: Path | None = None,
    interval_seconds: float = 3.0,
    echo: Callable[[str], Any] = print,
) -> int:
    """``marginwatch demo``: returns 0 when images were assessed and the daemon stopped cleanly."""
    root = (root or demo_root()).resolve()
    export, state = root / "export", root / "state"
    shutil.rmtree(export, ignore_errors=True)  # a fresh run each time: only demo data lives here
    for name in ("marginwatch.db", "marginwatch.db-wal", "marginwatch.db-shm"):
        (state / name).unlink(missing_ok=True)
    export.mkdir(parents=True)
    state.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    model = _demo_model()
    from marginwatch.engine.card import read_card

    card = read_card(model)
    model_text = (f"{card.architecture} from {model}"
                  + (" (SYNTHETIC DEMO MODEL)" if card.synthetic_demo else ""))
    config = write_demo_config(state / "marginwatch.toml", export=export, state=state,
                               model=model)
    db = state / "marginwatch.db"
    daemon = DaemonChild(config, state / "daemon.log")
    scanner = SimulatedScanner(export, interval_seconds=interval_seconds, size_px=DEMO_SCAN_PX)
    daemon_exit: int | None = None
    interactive = duration_seconds is None or sys.stdout.isatty()
    try:
        echo(f"demo: export {export}, state {state}; starting the daemon ...")
        daemon.start()
        _wait_running(db, daemon, stop)
        scanner.start()
        echo("demo: daemon running; simulated scanner writing a scan every "
             f"{interval_seconds:g} s" + ("" if interactive else f" for {duration_seconds:g} s"))
        ends = None if duration_seconds is None else time.monotonic() + duration_seconds

        def finished() -> bool:
            if ends is not None and time.monotonic() >= ends:
                return True
            if not daemon.alive():
                return True
            return stop.is_set()

        if interactive:
            from .dashboard import run_dashboard

            run_dashboard(db=str(db), config_path=config, stop=finished)
        else:
            while not finished():
                time.sleep(0.2)
        scanner.stop()
        if not daemon.alive():
            raise DaemonError(f"the daemon stopped unexpectedly; its log ends:\n"
                              f"{daemon.log_tail()}")
        if duration_seconds is not None:
            _drain(db, scanner, stop)
    except KeyboardInterrupt:
        echo("demo: interrupted; stopping the scanner and the daemon ...")
    finally:
        scanner.stop()
        daemon_exit = daemon.stop()
        signal.signal(signal.SIGTERM, previous)
    if scanner.error is not None:
        raise DaemonError(f"the simulated scanner failed: {scanner.error!r}")
    summary = _summary(db, scanner, daemon_exit, model_text)
    for line in summary.lines():
        echo(line)
    ok = summary.assessed > 0 and daemon_exit == 0
    return 0 if ok or duration_seconds is None else 1
