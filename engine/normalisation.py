"""The model card's input normalisation, applied where the tiles meet the device.

Tiles travel from the reader to the backend as 8-bit RGB ``(N, 3, H, W) uint8`` (a
quarter of float32's memory and host-to-device traffic: a 20,000 px mosaic's 529 tiles
of 896 px are 1.2 GB as uint8, 4.9 GB as float32). The backend (and ``Model.infer``)
turns them into what the network, the ONNX graph and the TensorRT engine take:
``(x / 255 - mean) / std`` float32, per channel, on the target device. Training caches
tiles as the same uint8 RGB, so inference and training see identical input.
"""

from __future__ import annotations

import torch

from .card import Normalisation

__all__ = ["normalise_tiles", "tiles_to_uint8"]


def normalise_tiles(tiles: torch.Tensor, normalisation: Normalisation) -> torch.Tensor:
    """``(N, 3, H, W)`` uint8 RGB -> normalised float32 on the same device.

    Float input is returned unchanged: it is taken to be normalised already (the
    contract of ``Model.infer`` and ``Backend.infer`` before tiles were uint8).
    """
    if tiles.dtype != torch.uint8:
        return tiles
    mean = torch.tensor(normalisation.mean, dtype=torch.float32, device=tiles.device)
    std = torch.tensor(normalisation.std, dtype=torch.float32, device=tiles.device)
    out = tiles.to(torch.float32).div_(255.0)
    return out.sub_(mean[:, None, None]).div_(std[:, None, None])


def tiles_to_uint8(rgb: torch.Tensor) -> torch.Tensor:
    """RGB float in [0, 1] (any shape) -> uint8, rounded to nearest (as training caches it)."""
    return rgb.mul(255.0).round_().clamp_(0.0, 255.0).to(torch.uint8)
