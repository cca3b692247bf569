"""SIGHUP: re-read the configuration and apply what can change live; the Service's reload.

What may change without a restart is named here (:data:`LIVE_DAEMON_FIELDS`, and every
engine field but :data:`RESTART_ENGINE_FIELDS`); every ``[cases]`` setting is live. A
reload is audited (``config.reloaded``: what changed, what needs a restart), or, when
the new file is refused, ``config.reload_failed`` with the configuration unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from marginwatch.engine.config import Config
from marginwatch.engine.errors import ConfigError

from .locations import LocationRules
from .observer import PathFilter
from .pipeline import Pipeline, Settings
from .readiness import ReadinessTracker
from .sdnotify import Notifier

__all__ = ["LIVE_DAEMON_FIELDS", "RESTART_ENGINE_FIELDS", "ReloadMethods"]

logger = logging.getLogger(__name__)

#: daemon settings that SIGHUP applies live; every other change needs a restart.
LIVE_DAEMON_FIELDS = (
    "settle_seconds", "stable_polls", "poll_interval_seconds", "rescan_seconds",
    "ignore_globs", "image_globs", "max_attempts", "retry_delay_seconds", "lease_seconds",
    "max_batch_tiles", "max_batch_wait_ms", "shutdown_seconds", "heartbeat_seconds",
    "drift_check_seconds",
)
#: engine settings read per image (so live); the backend and how it was built (precision,
#: engine cache, TensorRT optimisation profile and workspace) are fixed until a restart.
RESTART_ENGINE_FIELDS = (
    "backend", "precision", "engine_cache_dir", "tensorrt_max_batch", "tensorrt_workspace_mib",
)


class ReloadMethods:
    """SIGHUP's reload, for the Service.

    Uses these attributes, all set in ``Service.__init__``: ``config``, ``store``,
    ``owner``, ``notifier``, ``tracker``, ``pipeline``, ``_reload_config``,
    ``_locations`` and ``_filter``; and the Service's ``_status_text()``.
    """

    config: Config
    store: Any
    owner: str
    notifier: Notifier
    tracker: ReadinessTracker
    pipeline: Pipeline
    _reload_config: Callable[[], Config] | None
    _locations: LocationRules
    _filter: PathFilter

    def _status_text(self) -> str:  # pragma: no cover - the Service's
        raise NotImplementedError

    def reload(self) -> None:
        """Re-read the configuration and apply the settings that can change live."""
        if self._reload_config is None:
            return
        self.notifier.reloading(status="reloading configuration")
        try:
            new = self._reload_config()
        except ConfigError as exc:
            logger.error("reload refused, configuration unchanged: %s", exc)
            self.store.audit("config.reload_failed", self.owner, {"error": str(exc)}, self.owner)
            self.notifier.ready(status=self._status_text())
            return
        old = self.config
        changed: dict[str, list[Any]] = {}
        needs_restart: list[str] = []
        for section in ("daemon", "engine"):
            before = getattr(old, section).model_dump(mode="json")
            after = getattr(new, section).model_dump(mode="json")
            for name, value in after.items():
                if before.get(name) == value:
                    continue
                live = (name in LIVE_DAEMON_FIELDS if section == "daemon"
                        else name not in RESTART_ENGINE_FIELDS)
                if live:
                    changed[f"{section}.{name}"] = [before.get(name), value]
                    setattr(getattr(old, section), name, getattr(getattr(new, section), name))
                else:
                    needs_restart.append(f"{section}.{name}")
        if new.cases != old.cases:  # every [cases] setting is live: the next image uses it
            changed["cases"] = [old.cases.model_dump(mode="json"),
                                new.cases.model_dump(mode="json")]
            old.cases = new.cases
            self._locations = LocationRules.from_config(new.cases)
        d = old.daemon
        self.tracker.settle_seconds = d.settle_seconds
        self.tracker.stable_polls = d.stable_polls
        self._filter.update(d.image_globs, d.ignore_globs)  # shared with the observer
        self.pipeline.settings = Settings(d.max_attempts, d.retry_delay_seconds)
        self.pipeline.set_batching(d.max_batch_tiles, d.max_batch_wait_ms)
        self.store.audit("config.reloaded", self.owner,
                         {"source": new.source, "changed": changed, "needs_restart": needs_restart},
                         self.owner)
        logger.info("configuration reloaded: %d change(s) applied, %d need a restart (%s)",
                    len(changed), len(needs_restart), ", ".join(needs_restart) or "none")
        self.notifier.ready(status=self._status_text())
