"""A simulated FCM scanner for ``marginwatch demo``: synthetic scans into case folders.

Like a real export it writes each file under a temporary name (``.<name>.part``,
which the daemon ignores) and then renames it into place, so the daemon never sees a
half-written image. Mostly benign fields, some with tumour at the margin, and one
broken file (bytes that are not an image) so that a "not assessed" alert shows too.
A case is scanned face by face (apex, base, posterolateral, anterolateral, anterior,
posterior): the location is in each name, and every second scan also has a sidecar
JSON written before its image lands (:mod:`marginwatch.tools._synth_cases`), so the
dashboard's case panel fills up face by face.
Images come from the synthetic generator (:mod:`marginwatch.tools.synth`); the demo
writes them at the size the demo model was trained on (``DEMO_SCAN_PX`` in demo.py), and
each file's truth (``kind``) is kept so the demo's summary can count which tumour and
benign scans raised a tumour alert.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

__all__ = ["Landed", "SimulatedScanner", "plan"]

logger = logging.getLogger(__name__)

BROKEN_AT = 2  # the third file is broken: a not-assessed alert early in the demo
IMAGES_PER_CASE = 8  # one scan per face of the specimen


@dataclass(frozen=True)
class Landed:
    """One file the scanner put in the export folder (``kind``: benign, tumour, broken)."""

    rel_path: str
    kind: str
    landed_at: datetime


def plan(index: int) -> str:
    """What the ``index``-th scan is: about one in four tumour, one broken file."""
    if index == BROKEN_AT:
        return "broken"
    return "tumour" if index % 4 == 1 else "benign"


@dataclass
class SimulatedScanner:
    """Writes one scan every ``interval_seconds`` into ``export/<case>/`` until stopped."""

    export: Path
    interval_seconds: float = 3.0
    size_px: int = 512
    seed: int = 2026
    max_files: int | None = None
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    landed: list[Landed] = field(default_factory=list)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-scanner", daemon=True)
        self._lock = threading.Lock()

    def should_keep_running(self) -> bool:
        return not self._stop.is_set()

    def start(self) -> SimulatedScanner:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> SimulatedScanner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def files(self) -> list[Landed]:
        with self._lock:
            return list(self.landed)

    def _run(self) -> None:
        from marginwatch.tools import has_sidecar, location_of, scan_name, write_sidecar
        from marginwatch.tools.synth import generate_image, patient_style, write_image

        rng = np.random.default_rng(self.seed)
        index = 0
        next_at = time.monotonic() + 0.5
        style = None
        try:
            while self.should_keep_running():
                if self.max_files is not None and index >= self.max_files:
                    return
                case = f"case-{index // IMAGES_PER_CASE + 1:02d}"
                if index % IMAGES_PER_CASE == 0:
                    style = patient_style(rng)
                kind = plan(index)
                scan = index % IMAGES_PER_CASE + 1
                name = scan_name(case, scan, stem="scan").partition("/")[2]
                folder = self.export / case
                folder.mkdir(parents=True, exist_ok=True)
                temp = folder / f".{name}.part"
                if kind == "broken":
                    temp.write_bytes(b"II*\x00" + rng.bytes(2048))  # a TIFF header, then noise
                else:
                    image = generate_image(rng, kind, size_px=self.size_px, style=style)
                    write_image(temp, image)
                if self._stop.wait(max(0.0, next_at - time.monotonic())):
                    temp.unlink(missing_ok=True)
                    return
                if has_sidecar(scan):  # before the image lands, as a scanner would
                    write_sidecar(folder / name, location_of(scan), scan=scan)
                os.replace(temp, folder / name)  # the scanner's rename: the file lands whole
                with self._lock:
                    self.landed.append(Landed(f"{case}/{name}", kind, self.clock()))
                logger.debug("demo scanner wrote scan %d (%s)", index + 1, kind)
                index += 1
                next_at = time.monotonic() + self.interval_seconds
        except BaseException as exc:  # noqa: BLE001 - reported by the demo, not lost in a thread
            self.error = exc
