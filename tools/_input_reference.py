"""The training-set image summary for input-drift monitoring, written into the model card.

``marginwatch train`` calls :func:`input_reference` on its held-out validation images
(not trained on, so their features look like new images from the same centre): the
same summary the daemon stores per prediction (the mean over an image's tiles of the
global-average-pooled last feature map, engine.inference ``pooled``), reduced by
:func:`marginwatch.tools.monitoring.reference_from_features`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from . import monitoring

__all__ = ["MIN_IMAGES", "input_reference", "pooled_features"]

logger = logging.getLogger(__name__)

MIN_IMAGES = 5


@torch.no_grad()
def pooled_features(model: Any, tiles: torch.Tensor, batch_size: int = 16) -> np.ndarray:
    """(M, K) pooled features of (M, 3, S, S) uint8 RGB tiles, eval mode, on the CPU."""
    network = model.torch_module()
    mean = torch.tensor(model.card.normalisation.mean)[:, None, None]
    std = torch.tensor(model.card.normalisation.std)[:, None, None]
    out = []
    for start in range(0, len(tiles), batch_size):
        batch = tiles[start : start + batch_size].float().div_(255.0).sub_(mean).div_(std)
        _, feature_map = network.forward_features(batch)
        out.append(feature_map.float().mean(dim=(2, 3)))  # (N, K, h, w) -> (N, K)
    return torch.cat(out).numpy()


def input_reference(
    model: Any, cache: Any, *, source: str = "validation images"
) -> dict[str, Any] | None:
    """The card's ``input_reference`` from a TileCache (tiles, image_of) of held-out images.

    None (no drift test for this model; ``monitor`` says so) with fewer than
    :data:`MIN_IMAGES` images: too few to describe a centre.
    """
    if len(cache) < MIN_IMAGES:
        logger.warning("only %d held-out image(s): no input-drift reference in the card",
                       len(cache))
        return None
    per_tile = pooled_features(model, cache.tiles)
    image_of = np.asarray(cache.image_of)
    per_image = np.stack([per_tile[image_of == i].mean(axis=0) for i in range(len(cache))])
    return monitoring.reference_from_features(per_image, source=source)
