"""Bind the engine's stages to one loaded model, backend and configuration.

The pipeline calls ``prepare(path)``, ``finish(prepared, inference)`` and
``record(assessment)`` (the :class:`~._collaborators.Stages` Protocol; ``record``
encodes the heatmap PNG, in the finisher, before the finishing transaction); this
module supplies them from :mod:`marginwatch.engine` and registers the model in the
store. The configuration object is held by reference, so engine settings changed by
SIGHUP apply to the next image.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from marginwatch.engine.config import Config

if TYPE_CHECKING:
    from marginwatch.engine.assessment import Assessment, PreparedImage
    from marginwatch.engine.inference import Inference
    from marginwatch.storage.records import AssessmentRecord

__all__ = ["TENSORRT_START_EXTEND_SECONDS", "EngineStages", "inference_threads", "load_stages",
           "may_build_tensorrt"]

logger = logging.getLogger(__name__)

#: Start-up time asked of systemd (``EXTEND_TIMEOUT_USEC``) before a TensorRT backend is
#: selected: a first start on a new GPU builds the engine, which takes minutes, longer
#: than a typical ``TimeoutStartSec=``. Bounded, so a hung build still ends the start.
TENSORRT_START_EXTEND_SECONDS = 30 * 60.0


def may_build_tensorrt(backend: str) -> bool:
    """Whether ``engine.backend`` may resolve to TensorRT (so may build an engine)."""
    if backend == "tensorrt":
        return True
    # "auto" picks TensorRT when it is importable (find_spec does not import it).
    return backend == "auto" and importlib.util.find_spec("tensorrt") is not None


class EngineStages:
    """``prepare`` / ``finish`` / ``record`` for one model (see the module docstring)."""

    def __init__(
        self, engine: Any, model: Any, config: Config, backend: Any, model_id: int
    ) -> None:
        self._engine = engine
        self._model = model
        self._config = config
        self._backend = backend
        self._model_id = model_id

    def prepare(self, path: str) -> PreparedImage:
        return self._engine.prepare(path, self._model, self._config.engine)

    def finish(self, prepared: PreparedImage, inference: Inference | None) -> Assessment:
        return self._engine.finish(prepared, inference, self._model, self._config.engine,
                                   backend=self._backend)

    def record(self, assessment: Assessment) -> AssessmentRecord:
        """The storage record, with the heatmap encoded here (before the transaction)."""
        from marginwatch.engine.render import encode_heatmap_png
        from marginwatch.storage.records import AssessmentRecord

        png = None if assessment.heatmap is None else encode_heatmap_png(assessment.heatmap)
        return AssessmentRecord.from_assessment(
            assessment, model_id=self._model_id, precision=self._backend.precision,
            heatmap_png=png,
        )


def inference_threads(config: Config, environ: Mapping[str, str] | None = None) -> int:
    """torch's CPU threads for the daemon's inference (``daemon.inference_threads``).

    0 (the default) means ``OMP_NUM_THREADS`` when it is set, else the CPUs this process
    may run on less the reader threads (``daemon.workers``), at least 1. The readers
    prepare the next images while the network runs, so on a 2-core machine one
    inference thread beats two, which would fight the reader for both cores
    (docs/benchmarks.md: a 20-image burst, 11.7 against 13.3 images/s).
    """
    d = config.daemon
    if d.inference_threads > 0:
        return d.inference_threads
    environ = os.environ if environ is None else environ
    value = environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus - d.workers)


def load_stages(
    config: Config, store: Any, *, actor: str, notifier: Any = None
) -> tuple[EngineStages, Callable[[Any], Any], int, dict[str, Any]]:
    """Load the model, pick the backend, register the model; return what the service needs.

    ``notifier`` (a :class:`~marginwatch.daemon.sdnotify.Notifier`) is asked for more
    start-up time before a TensorRT backend is selected (it may build an engine).
    """
    import torch
    from marginwatch import engine

    threads = inference_threads(config)
    torch.set_num_threads(threads)
    assert config.daemon.model_dir is not None
    model = engine.load_model(config.daemon.model_dir)
    if notifier is not None and may_build_tensorrt(config.engine.backend):
        logger.info("asking systemd for %.0f s more start-up time (TensorRT engine may be built)",
                    TENSORRT_START_EXTEND_SECONDS)
        notifier.extend_timeout(TENSORRT_START_EXTEND_SECONDS)
        notifier.status("starting: preparing the TensorRT engine (a first start builds it)")
    backend = engine.select_backend(model, config.engine)
    card = model.card.model_dump(mode="json")
    model_id = store.register_model(model.digest, model.card.architecture, card, actor=actor)
    described = {
        "model_id": model_id,
        "model_digest": model.digest,
        "architecture": model.card.architecture,
        "synthetic_demo": bool(card.get("synthetic_demo", False)),
        "backend": backend.name,
        "device": backend.device,
        "precision": backend.precision,
        "inference_threads": threads,
    }
    stages = EngineStages(engine, model, config, backend, model_id)
    return stages, backend.infer, model_id, described
