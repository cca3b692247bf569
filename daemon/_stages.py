"""Bind the engine's stages to one loaded model, backend and configuration.

The pipeline calls ``prepare(path)``, ``finish(prepared, inference)`` and
``record(assessment)``; this module supplies them from :mod:`marginwatch.engine` and
registers the model in the store. The configuration object is held by reference, so
engine settings changed by SIGHUP apply to the next image.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from marginwatch.engine.config import Config

__all__ = ["EngineStages", "load_stages"]


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

    def prepare(self, path: str) -> Any:
        return self._engine.prepare(path, self._model, self._config.engine)

    def finish(self, prepared: Any, inference: Any) -> Any:
        return self._engine.finish(prepared, inference, self._model, self._config.engine,
                                   backend=self._backend)

    def record(self, assessment: Any) -> Any:
        from marginwatch.storage.records import AssessmentRecord

        return AssessmentRecord.from_assessment(
            assessment, model_id=self._model_id, precision=self._backend.precision
        )


def load_stages(
    config: Config, store: Any, *, actor: str
) -> tuple[EngineStages, Callable[[Any], Any], int, dict[str, Any]]:
    """Load the model, pick the backend, register the model; return what the service needs."""
    from marginwatch import engine

    assert config.daemon.model_dir is not None
    model = engine.load_model(config.daemon.model_dir)
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
    }
    stages = EngineStages(engine, model, config, backend, model_id)
    return stages, backend.infer, model_id, described
