"""The TensorRT engine cache: keys, paths, metadata and the load-or-build decision.

A serialised TensorRT plan is only valid for the model it was built from, the TensorRT
version that built it, the GPU model it was built on (name and compute capability),
the precision and the optimisation profile (max batch, input size). :class:`EngineKey`
holds exactly those parts; any change gives another file. Layout of the cache folder::

    <model digest[:16]>-<precision>-b<max batch>-<key digest[:16]>.plan   the plan
    <same stem>.json                                                      its key + plan SHA-256
    timing-trt<version>-<gpu slug>-sm<cc>.cache                           TensorRT timing cache

The timing cache depends on the TensorRT version and the GPU, not on the model, so all
models built on one machine share it (later builds are faster). Files are written to a
temporary name and renamed, so a reader sees a whole plan or none; a plan whose
metadata is missing, unreadable, for another key, or whose bytes do not hash to the
recorded SHA-256 is treated as absent and rebuilt.

This module imports neither torch nor tensorrt: the build is a parameter
(:func:`ensure_plan`), so everything here is tested without a GPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import BackendError, EngineBuildError

__all__ = [
    "BuildOutput",
    "EngineCache",
    "EngineKey",
    "MessageLog",
    "PreparedPlan",
    "atomic_write",
    "default_cache_dir",
    "ensure_plan",
]

logger = logging.getLogger(__name__)

KEY_FORMAT = 1  # bump when the meaning of a key part changes


@dataclass(frozen=True)
class EngineKey:
    """Everything a plan's validity depends on."""

    model_digest: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "9.0"
    precision: str  # "fp16" | "fp32"
    max_batch: int
    input_size_px: int

    def as_dict(self) -> dict[str, str | int]:
        return {"key_format": KEY_FORMAT, **dataclasses.asdict(self)}

    def digest(self) -> str:
        """SHA-256 of the canonical JSON of every part."""
        text = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    @property
    def stem(self) -> str:
        return f"{self.model_digest[:16]}-{self.precision}-b{self.max_batch}-{self.digest()[:16]}"

    @property
    def timing_cache_name(self) -> str:
        return (f"timing-trt{_slug(self.tensorrt_version)}-{_slug(self.gpu_name)}"
                f"-sm{_slug(self.compute_capability)}.cache")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "unknown"


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where plans go when ``engine.engine_cache_dir`` is unset.

    systemd's ``CacheDirectory=`` (``$CACHE_DIRECTORY``), else ``$XDG_CACHE_HOME``,
    else ``~/.cache``; then ``marginwatch/engines`` (``engines`` under systemd's own).
    """
    env = os.environ if environ is None else environ
    if env.get("CACHE_DIRECTORY"):
        return Path(env["CACHE_DIRECTORY"].split(":")[0]) / "engines"
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "marginwatch" / "engines"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise


class MessageLog:
    """Collects a builder's log lines (TensorRT's ILogger forwards here) for error messages."""

    def __init__(self, limit: int = 200) -> None:
        self._lines: list[str] = []
        self._limit = limit

    def add(self, severity: str, message: str) -> None:
        self._lines.append(f"[{severity}] {message.rstrip()}")
        del self._lines[: -self._limit]

    @property
    def lines(self) -> list[str]:
        return list(self._lines)

    def text(self) -> str:
        return "\n".join(self._lines)


@dataclass(frozen=True)
class BuildOutput:
    """What a build function returns: the serialised plan and the updated timing cache."""

    plan: bytes
    timing_cache: bytes | None = None


@dataclass(frozen=True)
class PreparedPlan:
    """A plan ready to deserialise; ``path`` is None when it could not be cached."""

    key: EngineKey
    plan: bytes
    path: Path | None
    built: bool
    build_seconds: float | None


class EngineCache:
    """One cache folder (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def plan_path(self, key: EngineKey) -> Path:
        return self.directory / f"{key.stem}.plan"

    def metadata_path(self, key: EngineKey) -> Path:
        return self.directory / f"{key.stem}.json"

    def timing_cache_path(self, key: EngineKey) -> Path:
        return self.directory / key.timing_cache_name

    def load(self, key: EngineKey) -> bytes | None:
        """The cached plan for ``key``, or None (absent, or fails its metadata check)."""
        plan_path, meta_path = self.plan_path(key), self.metadata_path(key)
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            plan = plan_path.read_bytes()
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.warning("engine cache %s unreadable (%s); rebuilding", key.stem, exc)
            return None
        if not isinstance(meta, dict) or meta.get("key") != key.as_dict():
            logger.warning("engine cache %s: metadata is for another key; rebuilding", key.stem)
            return None
        if meta.get("plan_sha256") != hashlib.sha256(plan).hexdigest():
            logger.warning("engine cache %s: plan bytes do not match their SHA-256; rebuilding",
                           key.stem)
            return None
        return plan

    def store(self, key: EngineKey, plan: bytes, *, build_seconds: float) -> Path:
        """Write the plan, then its metadata (the metadata makes it valid), atomically."""
        meta = {
            "key": key.as_dict(),
            "plan_sha256": hashlib.sha256(plan).hexdigest(),
            "plan_bytes": len(plan),
            "build_seconds": round(build_seconds, 3),
            "built_at_unix": int(time.time()),
        }
        atomic_write(self.plan_path(key), plan)
        atomic_write(self.metadata_path(key), (json.dumps(meta, indent=2) + "\n").encode("utf-8"))
        return self.plan_path(key)

    def read_timing_cache(self, key: EngineKey) -> bytes | None:
        try:
            return self.timing_cache_path(key).read_bytes() or None
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("timing cache unreadable (%s); starting an empty one", exc)
            return None

    def write_timing_cache(self, key: EngineKey, data: bytes) -> None:
        atomic_write(self.timing_cache_path(key), data)


BuildFunction = Callable[[bytes | None], BuildOutput]


def ensure_plan(
    key: EngineKey,
    cache: EngineCache,
    build: BuildFunction,
    *,
    rebuild: bool = False,
    clock: Callable[[], float] = time.perf_counter,
) -> PreparedPlan:
    """Load the cached plan for ``key``, else ``build(timing_cache_bytes)`` and cache it.

    A build failure propagates (:class:`EngineBuildError`; any other exception from
    ``build`` becomes one, with the message). A plan that cannot be written to the cache
    is still returned (``path=None``) with a warning: the daemon can run, it will just
    build again on its next start.
    """
    if not rebuild:
        plan = cache.load(key)
        if plan is not None:
            logger.info("TensorRT engine %s loaded from the cache", key.stem)
            return PreparedPlan(key, plan, cache.plan_path(key), built=False, build_seconds=None)
    logger.info("building TensorRT engine %s (%s, max batch %d, %s %s); this can take minutes",
                key.stem, key.precision, key.max_batch, key.gpu_name, key.compute_capability)
    started = clock()
    try:
        output = build(cache.read_timing_cache(key))
    except BackendError:
        raise
    except (RuntimeError, ValueError, TypeError, AttributeError) as exc:
        raise EngineBuildError(f"TensorRT engine build for {key.stem} failed: {exc}") from exc
    seconds = clock() - started
    if not output.plan:
        raise EngineBuildError(f"TensorRT engine build for {key.stem} returned an empty plan")
    logger.info("built TensorRT engine %s in %.1f s (%d bytes)", key.stem, seconds,
                len(output.plan))
    path: Path | None
    try:
        if output.timing_cache:
            cache.write_timing_cache(key, output.timing_cache)
        path = cache.store(key, output.plan, build_seconds=seconds)
    except OSError as exc:
        logger.warning("cannot write the TensorRT engine cache in %s (%s); the engine is used "
                       "but will be built again next time", cache.directory, exc.strerror or exc)
        path = None
    return PreparedPlan(key, output.plan, path, built=True, build_seconds=seconds)
