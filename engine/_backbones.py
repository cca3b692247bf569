"""Backbones cut to ``features -> GAP -> dropout -> linear(2)``.

Every architecture ends in the same head so that Grad-CAM is exact without a backward
pass (engine/inference.py). Layers that a stock classifier has between its pooling and
its last linear layer move before the pooling or go:

- resnet: ``avgpool -> fc``: nothing to move; features = stem + layer1..4.
- efficientnet: ``avgpool -> dropout -> linear``: nothing to move.
- mobilenet_v3: ``avgpool -> Linear(C, H) -> Hardswish -> dropout -> linear``: the
  Linear + Hardswish become a 1x1 convolution + Hardswish *before* the pooling (same
  parameter count, now spatial, so the CAM sees it).
- convnext: ``avgpool -> LayerNorm2d -> flatten -> linear``: the LayerNorm2d moves
  before the pooling (it then normalises each position rather than the pooled vector).
- vgg_small: not a torchvision model. Five VGG-style stages (two 3x3 convolutions with
  BatchNorm and ReLU, then a 2x2 max-pool; 16 to 128 channels, about 0.47 M parameters). It is
  the bundled synthetic demo model's backbone: trained from random weights on a 2-core
  CPU it separates the synthetic classes within minutes, where mobilenet_v3_small from
  scratch stayed at chance (docs/training.md).

Weights are always ``None``: nothing is ever downloaded.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models.convnext import LayerNorm2d

__all__ = ["MarginNet", "build_network"]


class MarginNet(nn.Module):
    """``features (N,3,H,W) -> (N,K,h,w)``, then GAP -> dropout -> ``classifier`` (K -> 2)."""

    def __init__(self, features: nn.Module, channels: int, dropout: float, classes: int = 2):
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(p=dropout)
        self.classifier = nn.Linear(channels, classes)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (N, 3, H, W) -> ``(logits (N, 2), feature_map (N, K, h, w))``."""
        feature_map = self.features(x)
        pooled = torch.flatten(self.pool(feature_map), 1)
        return self.classifier(self.dropout(pooled)), feature_map

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]


def _resnet(name: str) -> tuple[nn.Module, int]:
    net = getattr(tvm, name)(weights=None)
    features = nn.Sequential(
        net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4
    )
    return features, net.fc.in_features


def _efficientnet(name: str) -> tuple[nn.Module, int]:
    net = getattr(tvm, name)(weights=None)
    return net.features, net.classifier[-1].in_features


def _mobilenet_v3(name: str) -> tuple[nn.Module, int]:
    net = getattr(tvm, name)(weights=None)
    stock = net.classifier[0]  # Linear(C, hidden) that used to follow the pooling
    conv = nn.Conv2d(stock.in_features, stock.out_features, kernel_size=1, bias=True)
    features = nn.Sequential(net.features, nn.Sequential(conv, nn.Hardswish()))
    return features, stock.out_features


def _convnext(name: str) -> tuple[nn.Module, int]:
    net = getattr(tvm, name)(weights=None)
    norm = net.classifier[0]
    assert isinstance(norm, LayerNorm2d)
    return nn.Sequential(net.features, norm), net.classifier[-1].in_features


VGG_SMALL_CHANNELS = (16, 32, 64, 96, 128)


def _vgg_small(name: str) -> tuple[nn.Module, int]:
    stages: list[nn.Module] = []
    in_channels = 3
    for out_channels in VGG_SMALL_CHANNELS:
        stages.append(
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )
        )
        in_channels = out_channels
    return nn.Sequential(*stages), in_channels


_FAMILIES = {
    "vgg_small": _vgg_small,
    "resnet": _resnet,
    "efficientnet": _efficientnet,
    "mobilenet_v3": _mobilenet_v3,
    "convnext": _convnext,
}


def build_network(architecture: str, dropout: float) -> MarginNet:
    """A fresh, randomly initialised :class:`MarginNet` (no download)."""
    for prefix, make in _FAMILIES.items():
        if architecture.startswith(prefix):
            features, channels = make(architecture)
            return MarginNet(features, channels, dropout)
    raise ValueError(f"unknown architecture {architecture!r}")
