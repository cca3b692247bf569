"""marginwatch.tools: everything around the model.

The synthetic FCM generator (:mod:`.synth`), training (:mod:`.train`), evaluation
(:mod:`.evaluate`) with its one metrics module (:mod:`.metrics`), ONNX/TensorRT export
(:mod:`.export`) and benchmarks (:mod:`.bench`). Names are imported lazily so that
importing one tool does not load the others (or torch, for the metrics).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "SynthImage": "synth",
    "generate_image": "synth",
    "write_dataset": "synth",
    "write_image": "synth",
    "TrainOptions": "train",
    "train": "train",
    "evaluate": "evaluate",
    "run_export": "export",
    "BenchOptions": "bench",
    "run_bench": "bench",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'marginwatch.tools' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
