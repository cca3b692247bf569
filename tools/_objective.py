"""What training minimises and how its outputs are calibrated.

- :class:`FocalLoss`: focal loss (Lin et al. 2017) on the two-class softmax with label
  smoothing and per-class weights, as in Fang, Mayor et al.:
  ``loss = -sum_c alpha_c * q_c * (1 - p_c)^gamma * log p_c`` with smoothed targets
  ``q = (1 - eps) * onehot + eps / 2``.
- :class:`AdaptiveClassWeights`: the ``alpha_c``. They start from the inverse square
  root of the training class frequencies (the weighted sampler already balances what
  the network sees, so the full inverse frequency would correct twice) and, after each
  epoch, move towards each class's share of the epoch's mean training loss: the class
  the network currently gets wrong more weighs more. Momentum 0.5, clipped to
  [0.25, 4], normalised to mean 1. Only training data drive them; validation is for
  early stopping and calibration.
- :func:`fit_temperature`: temperature scaling (Guo et al. 2017) on validation logits,
  minimising the negative log-likelihood over ``T`` in :data:`TEMPERATURE_RANGE`
  ([0.01, 100]; the first demo model's optimum lay below the old lower bound 0.05:
  its logits were tiny, and label smoothing alone bounds confident logits near
  log(19) = 2.9, so a well-trained model may want T < 1 too). A fit that lands on a
  bound is reported by training (``temperature_at_bound``): the range did not hold
  the optimum, and the probabilities are not calibrated.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TEMPERATURE_RANGE", "AdaptiveClassWeights", "FocalLoss", "fit_temperature"]

TEMPERATURE_RANGE = (0.01, 100.0)


class FocalLoss(nn.Module):
    """Focal loss with label smoothing and class weights on ``(N, 2)`` logits."""

    def __init__(self, gamma: float = 2.0, smoothing: float = 0.1) -> None:
        super().__init__()
        if gamma < 0 or not 0.0 <= smoothing < 0.5:
            raise ValueError(
                f"gamma={gamma}, smoothing={smoothing}: expected gamma >= 0, 0 <= smoothing < 0.5"
            )
        self.gamma = gamma
        self.smoothing = smoothing

    def per_sample(
        self, logits: torch.Tensor, labels: torch.Tensor, alpha: torch.Tensor
    ) -> torch.Tensor:
        """(N,) losses; ``labels`` (N,) int64 in {0, 1}; ``alpha`` (2,) class weights."""
        log_p = F.log_softmax(logits.float(), dim=1)
        p = log_p.exp()
        target = F.one_hot(labels, 2).float() * (1.0 - self.smoothing) + self.smoothing / 2.0
        focal = (1.0 - p).pow(self.gamma)
        return -(alpha.view(1, 2) * target * focal * log_p).sum(dim=1)

    def forward(
        self, logits: torch.Tensor, labels: torch.Tensor, alpha: torch.Tensor
    ) -> torch.Tensor:
        return self.per_sample(logits, labels, alpha).mean()


class AdaptiveClassWeights:
    """Per-class loss weights, adapted after each epoch (see module docstring)."""

    def __init__(self, class_counts: tuple[int, int], momentum: float = 0.5) -> None:
        counts = np.maximum(np.asarray(class_counts, dtype=float), 1.0)
        weights = 1.0 / np.sqrt(counts / counts.sum())
        self.weights = weights / weights.mean()
        self.momentum = momentum
        self._sum = np.zeros(2)
        self._n = np.zeros(2)

    def tensor(self) -> torch.Tensor:
        return torch.tensor(self.weights, dtype=torch.float32)

    def observe(self, losses: torch.Tensor, labels: torch.Tensor) -> None:
        """Accumulate unweighted per-sample losses of one batch."""
        losses = losses.detach().cpu().double().numpy()
        labels = labels.cpu().numpy()
        for c in (0, 1):
            self._sum[c] += losses[labels == c].sum()
            self._n[c] += (labels == c).sum()

    def end_epoch(self) -> None:
        """Move the weights towards each class's mean loss; reset the accumulators."""
        if (self._n > 0).all():
            mean = self._sum / self._n
            target = mean / mean.mean() if mean.mean() > 0 else np.ones(2)
            weights = (1 - self.momentum) * self.weights + self.momentum * target
            weights = np.clip(weights, 0.25, 4.0)
            self.weights = weights / weights.mean()
        self._sum[:] = 0.0
        self._n[:] = 0.0

    def state(self) -> list[float]:
        return [float(w) for w in self.weights]

    def load_state(self, weights: list[float]) -> None:
        self.weights = np.asarray(weights, dtype=float)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature minimising validation NLL of ``softmax(logits / T)``.

    A coarse log-spaced grid then a golden-section refinement: deterministic, and no
    optimiser state to go wrong on a handful of validation images. 1.0 when the
    labels hold only one class (nothing to calibrate against).
    """
    logits = logits.detach().double().cpu()
    labels = labels.long().cpu()
    if labels.unique().numel() < 2:
        return 1.0

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logits / math.exp(log_t), labels))

    low, high = TEMPERATURE_RANGE
    grid = np.linspace(math.log(low), math.log(high), 81)
    values = [nll(x) for x in grid]
    i = int(np.argmin(values))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    for _ in range(40):
        if nll(a) < nll(b):
            hi, b = b, a
            a = hi - ratio * (hi - lo)
        else:
            lo, a = a, b
            b = lo + ratio * (hi - lo)
    return float(math.exp((lo + hi) / 2))
