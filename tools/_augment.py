"""Training augmentation on RGB regions of interest, after the device profile.

Input and output: float tensors ``(N, 3, H, W)`` of RGB in [0, 1] (the engine's
``to_rgb`` output, before normalisation), square (``H == W``) so that 90-degree rotations
keep the shape. Every random choice comes from the ``torch.Generator`` passed in, so a
seeded run is repeatable and a resumed run continues the same stream.

Per image, independently:

- flips (horizontal, vertical, each p = 0.5) and a rotation by k x 90 degrees: margin
  orientation in a scan is arbitrary;
- stain jitter: each RGB channel's optical density ``-log(rgb)`` scaled by U(1 - s, 1 + s)
  (``s = stain``), i.e. the haematoxylin/eosin look-up drifts, as between centres;
- intensity: brightness x U(1 - b, 1 + b), contrast about the image mean x U(1 - b, 1 + b),
  gamma U(1 - b, 1 + b): laser power, detector gain;
- blur (p = ``blur_p``): Gaussian, sigma U(0.5, 1.5) px: focus fall-off, motion;
- noise (p = ``noise_p``): additive Gaussian, sigma U(0, ``noise``): shot/read noise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

__all__ = ["Augmentation"]

_EPS = 1e-3


def _gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """``image`` (3, H, W) blurred with a separable Gaussian of ``sigma`` px (reflect padding)."""
    radius = max(1, int(round(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    batch = image.unsqueeze(1)  # (3, 1, H, W): each channel on its own
    batch = F.conv2d(F.pad(batch, (radius, radius, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    batch = F.conv2d(F.pad(batch, (0, 0, radius, radius), mode="reflect"), kernel.view(1, 1, -1, 1))
    return batch.squeeze(1)


@dataclass(frozen=True)
class Augmentation:
    """Strengths of each augmentation; ``Augmentation.none()`` switches all off."""

    flips: bool = True
    rotations: bool = True
    stain: float = 0.10
    intensity: float = 0.15
    blur_p: float = 0.25
    noise_p: float = 0.5
    noise: float = 0.03

    @classmethod
    def none(cls) -> Augmentation:
        return cls(False, False, 0.0, 0.0, 0.0, 0.0, 0.0)

    def as_dict(self) -> dict[str, float | bool]:
        return asdict(self)

    def __call__(self, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """(N, 3, H, W) RGB in [0, 1] -> augmented copy, same shape, in [0, 1]."""
        if batch.ndim != 4 or batch.shape[1] != 3 or batch.shape[2] != batch.shape[3]:
            raise ValueError(f"expected square (N, 3, H, W) RGB; got {tuple(batch.shape)}")
        out = []
        for image in batch.float():
            out.append(self._one(image, generator))
        return torch.stack(out)

    def _one(self, image: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        def uniform(low: float, high: float) -> float:
            return low + (high - low) * float(torch.rand((), generator=g))

        if self.flips:
            if uniform(0, 1) < 0.5:
                image = image.flip(-1)
            if uniform(0, 1) < 0.5:
                image = image.flip(-2)
        if self.rotations:
            k = int(torch.randint(0, 4, (), generator=g))
            image = torch.rot90(image, k, dims=(-2, -1))  # (3, H, W): rotate the H, W plane
        if self.stain > 0:
            scale = torch.tensor([uniform(1 - self.stain, 1 + self.stain) for _ in range(3)])
            density = -torch.log(image.clamp(_EPS, 1.0))
            image = torch.exp(-density * scale.view(3, 1, 1))
        if self.intensity > 0:
            b = self.intensity
            image = image * uniform(1 - b, 1 + b)
            mean = image.mean()
            image = (image - mean) * uniform(1 - b, 1 + b) + mean
            image = image.clamp(0.0, 1.0) ** uniform(1 - b, 1 + b)
        if self.blur_p > 0 and uniform(0, 1) < self.blur_p:
            image = _gaussian_blur(image, uniform(0.5, 1.5))
        if self.noise_p > 0 and uniform(0, 1) < self.noise_p:
            sigma = uniform(0.0, self.noise)
            image = image + sigma * torch.randn(image.shape, generator=g)
        return image.clamp(0.0, 1.0).contiguous()
