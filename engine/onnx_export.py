"""ONNX export of a model: two named outputs and a dynamic batch axis.

The graph is the model's :meth:`~marginwatch.engine._backbones.MarginNet.forward_features`::

    input     (N, 3, H, W) float32, already normalised (the card's mean/std), H = W = input_size_px
    logits    (N, 2)       float32, before temperature scaling
    features  (N, K, h, w) float32, the last feature map (Grad-CAM's target layer)

Only ``N`` is dynamic. Probabilities and Grad-CAM are computed outside the graph from
these two outputs and the card (temperature) and the linear weights, exactly as for the
torch backends (engine/inference.py). The TensorRT backend builds its engines from
these bytes.

We use torch's TorchScript exporter (``dynamo=False``): it needs nothing beyond torch,
while the torch.export-based exporter that torch >= 2.9 defaults to also needs
``onnxscript``.
"""

from __future__ import annotations

import copy
import io
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ._engine_cache import atomic_write
from .errors import ModelError
from .model import Model

__all__ = ["INPUT_NAME", "OPSET", "OUTPUT_NAMES", "export_onnx", "onnx_bytes"]

logger = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAMES = ("logits", "features")
OPSET = 17
BATCH_AXIS = "batch"


class _TwoOutputs(nn.Module):
    """``forward`` -> ``(logits, features)``: what the exporter traces."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.network.forward_features(x)


def onnx_bytes(model: Model, *, opset: int = OPSET) -> bytes:
    """The model as an ONNX file's bytes (see the module docstring for inputs/outputs)."""
    size = model.card.input_size_px
    # A fresh wrapper is in training mode; eval() keeps BatchNorm on its running
    # statistics and dropout off (traced in train mode the graph would be wrong).
    network = model.torch_module()
    if model.device.type != "cpu":
        network = copy.deepcopy(network).cpu()
    wrapper = _TwoOutputs(network).eval()
    example = torch.zeros(2, 3, size, size, dtype=torch.float32)  # (N, 3, H, W)
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            # The TorchScript exporter's own deprecation notices (chosen on purpose, see above).
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                wrapper,
                (example,),
                buffer,
                input_names=[INPUT_NAME],
                output_names=list(OUTPUT_NAMES),
                dynamic_axes={name: {0: BATCH_AXIS} for name in (INPUT_NAME, *OUTPUT_NAMES)},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    except (RuntimeError, ValueError, TypeError) as exc:  # torch.onnx errors derive from these
        raise ModelError(
            f"model {model.digest[:12]} ({model.card.architecture}): ONNX export failed: {exc}"
        ) from exc
    return buffer.getvalue()


def export_onnx(model: Model, path: str | os.PathLike[str], *, opset: int = OPSET) -> Path:
    """Write :func:`onnx_bytes` to ``path`` atomically (temp file + rename); returns the path."""
    target = Path(path)
    if target.is_dir():
        raise ModelError(f"{target}: is a folder; expected an ONNX file name (e.g. model.onnx)")
    data = onnx_bytes(model, opset=opset)
    try:
        atomic_write(target, data)
    except OSError as exc:
        raise ModelError(f"{target}: cannot write the ONNX file: {exc.strerror or exc}") from exc
    logger.info("exported model %s (%s) to ONNX, %d bytes, opset %d",
                model.digest[:12], model.card.architecture, len(data), opset)
    return target
