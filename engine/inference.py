"""What one forward pass yields: logits, calibrated probabilities and exact Grad-CAMs.

Grad-CAM without a backward pass (docs/architecture.md, Key decisions). The head is
GAP -> dropout -> linear, so for class ``c`` and a feature map ``A`` (K, h, w)::

    y_c = sum_k w_ck * mean_ij A_k[i, j] + b_c
    dy_c / dA_k[i, j] = w_ck / (h * w)                      (the same at every position)
    alpha_k = mean_ij dy_c / dA_k[i, j] = w_ck / (h * w)    (Grad-CAM's channel weight)
    CAM = ReLU(sum_k alpha_k A_k) = ReLU(sum_k w_ck A_k) / (h * w)

We return ``ReLU(sum_k w_ck A_k)`` (the constant ``1/(h*w)`` dropped: the map is
unnormalised either way). Dropout is the identity in eval mode. The same function
serves every backend, TensorRT included, because it needs only the feature map.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import torch

__all__ = ["Inference", "calibrated_probabilities", "class_activation_maps", "make_inference"]

TUMOUR = 1  # index of "tumour at margin" in the (N, 2) logits


@dataclasses.dataclass(frozen=True, eq=False)
class Inference:
    """One batch's results; every tensor has the tile axis first and lives on the CPU.

    ``logits`` (N, 2) float32; ``probabilities`` (N,) calibrated tumour probability
    (softmax of logits / temperature); ``raw_probabilities`` (N,) the same at
    temperature 1; ``cams`` (N, h, w) float32 >= 0, unnormalised, feature-map resolution;
    ``pooled`` (N, K) float32, the global-average-pooled feature map (what the head sees),
    kept as a small image summary for input-drift monitoring.
    """

    logits: torch.Tensor
    probabilities: torch.Tensor
    raw_probabilities: torch.Tensor
    cams: torch.Tensor
    pooled: torch.Tensor | None = None
    backend: str = "torch"
    device: str = "cpu"
    precision: str = "fp32"
    forward_seconds: float = 0.0
    cam_seconds: float = 0.0

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    def slice(self, start: int, stop: int) -> Inference:
        """Rows ``start:stop`` along the tile axis."""
        return dataclasses.replace(
            self,
            logits=self.logits[start:stop],
            probabilities=self.probabilities[start:stop],
            raw_probabilities=self.raw_probabilities[start:stop],
            cams=self.cams[start:stop],
            pooled=None if self.pooled is None else self.pooled[start:stop],
        )

    @staticmethod
    def concat(parts: Sequence[Inference]) -> Inference:
        """Join batches along the tile axis; times add up."""
        if not parts:
            raise ValueError("concat needs at least one Inference")
        first = parts[0]
        return dataclasses.replace(
            first,
            logits=torch.cat([p.logits for p in parts]),
            probabilities=torch.cat([p.probabilities for p in parts]),
            raw_probabilities=torch.cat([p.raw_probabilities for p in parts]),
            cams=torch.cat([p.cams for p in parts]),
            pooled=(
                None
                if any(p.pooled is None for p in parts)
                else torch.cat([p.pooled for p in parts])  # type: ignore[misc]
            ),
            forward_seconds=sum(p.forward_seconds for p in parts),
            cam_seconds=sum(p.cam_seconds for p in parts),
        )


def calibrated_probabilities(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Tumour probability after temperature scaling: ``softmax(logits / T)[:, 1]``."""
    return torch.softmax(logits.float() / float(temperature), dim=1)[:, TUMOUR]


def class_activation_maps(feature_map: torch.Tensor, class_weight: torch.Tensor) -> torch.Tensor:
    """Exact Grad-CAM: ``feature_map`` (N, K, h, w), ``class_weight`` (K,) -> (N, h, w) >= 0."""
    weight = class_weight.to(device=feature_map.device, dtype=torch.float32)
    cams = torch.einsum("nkhw,k->nhw", feature_map.float(), weight)
    return torch.relu(cams)


def make_inference(
    logits: torch.Tensor,
    feature_map: torch.Tensor,
    class_weight: torch.Tensor,
    temperature: float,
    *,
    backend: str,
    device: str,
    precision: str,
    forward_seconds: float,
) -> Inference:
    """Probabilities and CAMs from a forward pass's logits and last feature map."""
    started = time.perf_counter()
    cams = class_activation_maps(feature_map, class_weight).cpu()
    pooled = feature_map.float().mean(dim=(2, 3)).cpu()  # (N, K, h, w) -> (N, K)
    cam_seconds = time.perf_counter() - started
    logits = logits.detach().float().cpu()
    return Inference(
        logits=logits,
        probabilities=calibrated_probabilities(logits, temperature),
        raw_probabilities=calibrated_probabilities(logits, 1.0),
        cams=cams,
        pooled=pooled,
        backend=backend,
        device=device,
        precision=precision,
        forward_seconds=forward_seconds,
        cam_seconds=cam_seconds,
    )
