"""marginwatch.engine: pure computation, from an image file to a decision.

No database, no watching. Heavy names (torch) are imported lazily on first use so
that ``marginwatch.engine.errors`` and ``marginwatch.engine.config`` stay light.
"""

from __future__ import annotations

from ._exports import lazy_exports

# name -> submodule that defines it; filled in as the engine grows.
_EXPORTS: dict[str, str] = {
    "Config": "config",
    "load_config": "config",
    "MarginwatchError": "errors",
    "lazy_exports": "_exports",  # public: daemon and tools build their surfaces with it
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

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
