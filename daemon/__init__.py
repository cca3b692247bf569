"""marginwatch.daemon: the long-running service beside the scanner, and the CLI.

The folder observer and reconcile scan (:mod:`.observer`), the readiness rules
(:mod:`.readiness`), cross-job tile batching (:mod:`.batching`), the reader/finisher
pipeline (:mod:`.pipeline`), each new image's case and margin location
(:mod:`.locations`) and the service's main loop with signals, heartbeat and sd_notify
(:mod:`.service`). Names are imported lazily so that ``marginwatch.daemon.cli``
starts without torch.
"""

from __future__ import annotations

from marginwatch.engine import lazy_exports

_EXPORTS: dict[str, str] = {
    "FolderObserver": "observer",
    "LocationRules": "locations",
    "Notifier": "sdnotify",
    "PathFilter": "observer",
    "ReadinessTracker": "readiness",
    "ReadyFile": "readiness",
    "Service": "service",
    "SignalFlags": "signals",
    "Sighting": "observer",
    "TileBatcher": "batching",
    "inference_threads": "_stages",
    "run_daemon": "service",
    "scan_folder": "observer",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
