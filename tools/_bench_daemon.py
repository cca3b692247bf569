"""Section 3: the daemon end to end, a real ``marginwatch run`` on a temp folder + SQLite.

Files are written to a staging folder on the same file system and ``os.rename``-d into
``<watch>/case/``; the rename time is taken with ``time.time()`` (CLOCK_REALTIME) just
after the rename returns. Two commit times are read per file, both on that clock:

- ``observed``: when a read-only SQLite connection (``mode=ro``, polling every few
  milliseconds) first sees the job ``done`` with its prediction: after the commit, so
  an upper bound (by at most one poll interval plus one query); what a dashboard sees.
  The poll reads ``PRAGMA data_version`` and queries the tables only after a commit,
  so the probe takes next to no CPU from the daemon it measures.
- ``stamped``: the prediction's ``created_at`` (= the alert's ``raised_at`` when there is
  one), written by the store inside the one finishing transaction, just before it
  commits: a lower bound.

And one screen time: ``dashboard``, when the dashboard's real live loop (in a thread
here, :mod:`._bench_dashboard`) first drew a frame showing the image's final state;
commit -> dashboard is that minus ``stamped`` (so an upper bound).

Prediction and alert are written in one transaction, so they commit at the same instant.
The daemon runs with the shipped defaults (readiness by format, ``settle_seconds`` 0,
1 s polls, ``max_batch_wait_ms`` 50, one worker) unless a setting is given. Phases:
warm-up files (not counted); a latency series (one file at a time, each after the
previous one is committed: an idle daemon); a burst (all renamed at once: sustained
images/s = files / (last commit - first rename)).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import tomli_w

from ._bench_dashboard import DashboardProbe
from ._bench_stats import summarise

__all__ = ["DaemonRun", "marginwatch_command", "run_daemon_case"]

QUERY = """
SELECT i.rel_path, j.state, p.created_at, p.timings_json, p.decision, a.raised_at, j.error_class
FROM images AS i JOIN jobs AS j ON j.image_id = i.id
LEFT JOIN predictions AS p ON p.id = j.prediction_id
LEFT JOIN alerts AS a ON a.image_id = i.id
WHERE j.state IN ('done', 'duplicate', 'failed')
"""


def marginwatch_command() -> list[str]:
    """The ``marginwatch`` console script beside this interpreter, else ``python -c main()``."""
    script = Path(sys.executable).with_name("marginwatch")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from marginwatch.daemon.cli import main; main()"]


def _utc_seconds(value: str | None) -> float | None:
    """A stored UTC timestamp (naive ISO text in SQLite) -> POSIX seconds."""
    if value is None:
        return None
    stamp = dt.datetime.fromisoformat(value)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return stamp.timestamp()


class DaemonRun:
    """One daemon subprocess and the files fed to it; use as a context manager."""

    def __init__(self, root: Path, model_dir: Path, *, device: str, precision: str,
                 settle_seconds: float | None, poll_interval_seconds: float | None,
                 max_batch_wait_ms: float | None, workers: int | None, poll_db_seconds: float,
                 timeout_seconds: float, dashboard: bool = True) -> None:
        self.root = root
        self.watch = root / "watch"
        self.case = self.watch / "case"
        self.staging = root / "staging"
        self.db_path = root / "state" / "marginwatch.db"
        self.log_path = root / "daemon.log"
        self.model_dir = model_dir
        self.poll_db_seconds = poll_db_seconds
        self.timeout_seconds = timeout_seconds
        self.settings = {
            "backend": "torch-cuda" if device == "cuda" else "torch-cpu",
            "precision": precision,
            "observer": "inotify",
            "settle_seconds": settle_seconds,
            "poll_interval_seconds": poll_interval_seconds,
            "max_batch_wait_ms": max_batch_wait_ms,
            "workers": workers,
        }
        self.renamed: dict[str, float] = {}
        self.observed: dict[str, float] = {}
        self.dashboard: DashboardProbe | None = None
        self._with_dashboard = dashboard
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self._db: sqlite3.Connection | None = None
        self._data_version: int | None = None
        self.rss_peak_kib: int | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def _config_text(self) -> str:
        s = self.settings
        # None: the shipped default (not written, so the daemon's own default applies)
        daemon = {key: s[key] for key in ("observer", "settle_seconds", "poll_interval_seconds",
                                          "max_batch_wait_ms", "workers") if s[key] is not None}
        return tomli_w.dumps({
            "engine": {"backend": s["backend"], "precision": s["precision"]},
            "daemon": {**daemon, "rescan_seconds": 3600, "heartbeat_seconds": 2,
                       "state_dir": str(self.db_path.parent)},
        })

    def start(self) -> None:
        for folder in (self.case, self.staging, self.db_path.parent):
            folder.mkdir(parents=True, exist_ok=True)
        config = self.root / "marginwatch.toml"
        config.write_text(self._config_text(), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MARGINWATCH_")}
        env["MARGINWATCH_LOG_LEVEL"] = "INFO"
        self._log = self.log_path.open("wb")
        self._proc = subprocess.Popen(
            [*marginwatch_command(), "run", "--watch", str(self.watch), "--config", str(config),
             "--db", f"sqlite:///{self.db_path}", "--model", str(self.model_dir)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env,
        )
        deadline = time.monotonic() + self.timeout_seconds
        while b"ready:" not in self.log_path.read_bytes():
            if self._proc.poll() is not None:
                raise RuntimeError(f"marginwatch run exited with {self._proc.returncode} before "
                                   f"ready; see {self.log_path}:\n{self._tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"marginwatch run not ready after {self.timeout_seconds}s")
            time.sleep(0.05)
        if self._with_dashboard:
            self.dashboard = DashboardProbe(self.db_path).start()

    def _tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:]

    def stop(self) -> int | None:
        code = None
        if self.dashboard is not None:
            self.dashboard.stop()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                code = self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                code = self._proc.wait()
        elif self._proc is not None:
            code = self._proc.returncode
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def __enter__(self) -> DaemonRun:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- feeding and watching ------------------------------------------------------------

    def _rows(self) -> list[tuple[Any, ...]]:
        if self._db is None:
            if not self.db_path.exists():
                return []
            self._db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=5)
        try:
            return self._db.execute(QUERY).fetchall()
        except sqlite3.OperationalError:  # busy for longer than the timeout: try again
            return []

    def _changed(self) -> bool:
        """Whether another connection committed since the last look (``PRAGMA data_version``,
        a counter read without touching a table: the 5 ms poll costs next to nothing)."""
        if self._db is None:
            return True
        try:
            version = self._db.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.OperationalError:
            return True
        changed, self._data_version = version != self._data_version, version
        return changed

    def _inference_threads(self) -> int | None:
        """The daemon's torch CPU threads, from its ``daemon.start`` audit event."""
        if self._db is None:
            return None
        row = self._db.execute("SELECT payload_json FROM audit_events WHERE action = "
                               "'daemon.start' ORDER BY seq DESC LIMIT 1").fetchone()
        return None if row is None else json.loads(row[0]).get("inference_threads")

    def _observe(self) -> None:
        if not self._changed():
            return
        now = time.time()
        for row in self._rows():
            self.observed.setdefault(row[0], now)

    def _sample_rss(self) -> None:
        if self._proc is None:
            return
        try:
            text = Path(f"/proc/{self._proc.pid}/status").read_text()
        except OSError:
            return
        for line in text.splitlines():
            if line.startswith("VmHWM:"):
                self.rss_peak_kib = max(self.rss_peak_kib or 0, int(line.split()[1]))

    def rename_in(self, staged: Path) -> str:
        rel = f"case/{staged.name}"
        os.rename(staged, self.case / staged.name)
        self.renamed[rel] = time.time()
        return rel

    def wait_for(self, rel_paths: list[str]) -> None:
        deadline = time.monotonic() + self.timeout_seconds
        waiting = set(rel_paths)
        while waiting - set(self.observed):
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"marginwatch run exited with {self._proc.returncode}; "
                                   f"log:\n{self._tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(waiting - set(self.observed))} file(s) not committed "
                                   f"after {self.timeout_seconds}s; log:\n{self._tail()}")
            time.sleep(self.poll_db_seconds)
            self._observe()
        self._sample_rss()

    # --- results -------------------------------------------------------------------------

    def results(self, series: list[str], burst: list[str]) -> dict[str, Any]:
        rows = {r[0]: r for r in self._rows()}
        states: dict[str, int] = {}
        for rel in [*series, *burst]:
            state = rows[rel][1] if rel in rows else "missing"
            states[state] = states.get(state, 0) + 1

        visible = self.dashboard.visible if self.dashboard is not None else {}

        def latencies(paths: list[str]) -> dict[str, Any]:
            observed, stamped, own, overhead_own = [], [], [], []
            shown, shown_after_observed = [], []
            for rel in paths:
                row = rows.get(rel)
                if row is None or row[1] != "done":
                    continue
                observed.append(self.observed[rel] - self.renamed[rel])
                stamp = _utc_seconds(row[2])
                if stamp is not None:
                    stamped.append(stamp - self.renamed[rel])
                    if rel in visible:  # commit (stamped: its lower bound) -> on screen
                        shown.append(visible[rel] - stamp)
                        shown_after_observed.append(visible[rel] - self.observed[rel])
                timings = json.loads(row[3] or "{}")
                floor = sum(timings.get(k, 0.0) for k in ("read", "preprocess", "infer"))
                own.append(floor)
                if floor > 0:
                    overhead_own.append((self.observed[rel] - self.renamed[rel]) / floor)
            return {"observed": summarise(observed), "stamped": summarise(stamped),
                    "daemon_read_preprocess_infer": summarise(own),
                    "overhead_vs_own_stages": summarise(overhead_own),
                    "commit_to_dashboard": summarise(shown),
                    "observed_to_dashboard": summarise(shown_after_observed)}

        out: dict[str, Any] = {
            "settings": self.settings,
            "inference_threads": self._inference_threads(),
            "files": {"series": len(series), "burst": len(burst)},
            "states": states,
            "alerts": sum(1 for rel in [*series, *burst] if rel in rows and rows[rel][5]),
            "series": latencies(series),
            "burst": latencies(burst),
            "daemon_peak_rss_mib": None if self.rss_peak_kib is None else self.rss_peak_kib / 1024,
            "dashboard_frames": self.dashboard.frames if self.dashboard is not None else None,
        }
        done_burst = [rel for rel in burst if rel in self.observed]
        if done_burst:
            first = min(self.renamed[rel] for rel in burst)
            last = max(self.observed[rel] for rel in done_burst)
            out["burst"]["seconds"] = last - first
            out["burst"]["images_per_second"] = len(done_burst) / (last - first)
        return out


def run_daemon_case(root: Path, model_dir: Path, factory: Any, *, warmup: int, series: int,
                    burst: int, gap_seconds: float, **settings: Any) -> dict[str, Any]:
    """Warm-up, latency series, burst; see the module docstring."""
    run = DaemonRun(root, model_dir, **settings)
    with run:
        names: list[str] = []
        for i in range(warmup + series + burst):  # written before timing starts
            names.append(factory.write(run.staging / f"img{i:04d}.tif").name)
        started = time.perf_counter()
        warm = [run.rename_in(run.staging / n) for n in names[:warmup]]
        run.wait_for(warm)
        timed: list[str] = []
        for name in names[warmup : warmup + series]:
            rel = run.rename_in(run.staging / name)
            run.wait_for([rel])
            timed.append(rel)
            time.sleep(gap_seconds)
        burst_paths = [run.rename_in(run.staging / n) for n in names[warmup + series :]]
        run.wait_for(burst_paths)
        elapsed = time.perf_counter() - started
        result = run.results(timed, burst_paths)
    result["exit_code"] = run._proc.returncode if run._proc is not None else None
    result["wall_seconds"] = elapsed
    return result
