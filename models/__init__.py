"""marginwatch.models: the model artefacts bundled with marginwatch (package data).

``models/demo`` (``model.json`` + ``weights.safetensors``, trained on synthetic images
only) travels in the wheel, so ``marginwatch demo`` and ``marginwatch predict``'s default
model work after ``pip install``; in a source checkout (editable install) this is the
checkout's ``models/demo``. Imports nothing heavy.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["demo_model_dir"]


def demo_model_dir() -> Path:
    """The bundled synthetic demo model's folder (it may be missing from a stripped install)."""
    folder = files(__name__) / "demo"
    # Installed from a wheel or a checkout, the package is a real folder on disk.
    return Path(str(folder))
