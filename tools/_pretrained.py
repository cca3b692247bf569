"""``--pretrained FILE``: start from local weights in safetensors (never a download, never pickle).

Two layouts are understood:

- a marginwatch network (a model artefact's ``weights.safetensors``): names match as is;
- a stock torchvision classifier of the same architecture (for example ImageNet weights
  converted once with ``safetensors.torch.save_file(model.state_dict(), FILE)``): names
  are mapped onto the engine's ``features -> GAP -> dropout -> linear`` network
  (engine/_backbones.py); the 1000-class classifier is skipped.

Only tensors whose name and shape both match are loaded; the count is returned and
zero matches is an error, so a wrong file never silently trains from scratch.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from marginwatch.engine.errors import ModelError
from safetensors import SafetensorError
from safetensors.torch import load_file

__all__ = ["load_pretrained"]

_RESNET = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}


def _torchvision_name(name: str) -> str | None:
    """A stock torchvision key -> the engine network's key (None: no counterpart)."""
    head, _, rest = name.partition(".")
    if head in _RESNET:
        return f"features.{_RESNET[head]}.{rest}"
    if name.startswith("classifier.0."):  # mobilenet_v3: Linear(C, hidden) became a 1x1 conv
        return "features.1.0." + name.removeprefix("classifier.0.")
    if head == "features":
        return name  # efficientnet, convnext (indices unchanged)
    return None


def load_pretrained(network: torch.nn.Module, file: Path) -> int:
    """Copy matching tensors from ``file`` into ``network``; return how many were copied."""
    try:
        tensors = load_file(str(file))
    except FileNotFoundError as exc:
        raise ModelError(f"--pretrained {file}: file not found") from exc
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"--pretrained {file}: not a readable safetensors file: {exc}") from exc
    target = network.state_dict()
    mobilenet = any(k.startswith("features.1.0.") for k in target) and any(
        re.match(r"features\.0\.\d+\.", k) for k in target
    )
    loaded: dict[str, torch.Tensor] = {}
    for name, value in tensors.items():
        candidates = [name]
        mapped = _torchvision_name(name)
        if mapped is not None:
            candidates.append(mapped)
            if mobilenet and name.startswith("features."):
                candidates.append("features.0." + name.removeprefix("features."))
        for key in candidates:
            if key in target:
                want = target[key]
                if value.shape != want.shape and value.numel() == want.numel():
                    value = value.reshape(want.shape)  # Linear (H, C) -> 1x1 conv (H, C, 1, 1)
                if value.shape == want.shape:
                    loaded[key] = value.to(want.dtype)
                    break
    if not loaded:
        raise ModelError(
            f"--pretrained {file}: none of its {len(tensors)} tensors matches the network "
            f"(e.g. {sorted(tensors)[:3]}); expected a marginwatch or torchvision state dict "
            "of the same architecture"
        )
    network.load_state_dict(loaded, strict=False)
    return len(loaded)
