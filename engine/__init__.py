"""marginwatch.engine: pure computation, from an image file to a decision.

No database, no watching. Heavy names (torch) are imported lazily on first use so
that ``marginwatch.engine.errors`` and ``marginwatch.engine.config`` stay light.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> submodule that defines it; filled in as the engine grows.
_EXPORTS: dict[str, str] = {
    "Config": "config",
    "load_config": "config",
    "MarginwatchError": "errors",
    "ARCHITECTURES": "card",
    "DeviceProfile": "card",
    "ModelCard": "card",
    "Normalisation": "card",
    "Model": "model",
    "build_model": "model",
    "load_model": "model",
    "Inference": "inference",
    "Backend": "backends",
    "available_backends": "backends",
    "register_backend": "backends",
    "select_backend": "backends",
    "export_onnx": "onnx_export",
    "prepare_engine": "tensorrt_backend",
    "Assessment": "assessment",
    "PreparedImage": "assessment",
    "TileResult": "assessment",
    "assess": "assessment",
    "finish": "assessment",
    "prepare": "assessment",
    "ImageInfo": "reader",
    "ImageSource": "reader",
    "open_image": "reader",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'marginwatch.engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
