"""How labelled images become training samples: through the engine's own ``prepare``.

Training and inference must see identical pixels, so every image is read, checked,
mapped to RGB by the model card's device profile, cut into tiles at the card's
micrometres per pixel and input size by :func:`marginwatch.engine.assessment.prepare`,
exactly as the daemon does. Nothing here re-implements reading or tiling.

One region of interest per image, as in Fang, Mayor et al. (one 896 x 896 ROI per
image): an image that ``prepare`` cuts into several tiles (a 1024 px synthetic scan at
1 um/px gives four overlapping 896 px tiles) contributes ONE sample per draw, a tile
picked at random each time it is drawn, carrying the image's label. Validation and
test score every tile and aggregate them with the engine's rule
(``engine.aggregation``, default ``max``), as at inference.

Tiles are cached in memory as 8-bit RGB (``(M, 3, S, S)`` uint8, after the device
profile, before normalisation): a 1/510 rounding, far below the augmentation's
intensity jitter, and a quarter of float32's memory. ``evaluate`` does not use this
cache: it runs the engine's float pixels end to end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from marginwatch.engine.aggregation import aggregate
from marginwatch.engine.assessment import prepare
from marginwatch.engine.config import EngineConfig
from marginwatch.engine.errors import InputError, ManifestError, NoTissueError
from marginwatch.engine.model import Model

from ._manifest import Manifest

__all__ = ["TileCache", "aggregate_images", "build_cache"]

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class TileCache:
    """All tiles of a set of images; ``image_of[m]`` is the image index of tile ``m``."""

    tiles: torch.Tensor  # (M, 3, S, S) uint8 RGB
    image_of: np.ndarray  # (M,) int
    labels: np.ndarray  # (N,) int, per image
    offsets: np.ndarray  # (N + 1,) tile ranges: image i owns tiles offsets[i]:offsets[i+1]

    def __len__(self) -> int:
        return int(self.labels.size)

    def random_tile(self, image: int, generator: torch.Generator) -> int:
        lo, hi = int(self.offsets[image]), int(self.offsets[image + 1])
        return lo + int(torch.randint(0, hi - lo, (), generator=generator))


def build_cache(
    manifest: Manifest,
    model: Model,
    engine: EngineConfig,
    progress: Callable[[int], None] | None = None,
) -> tuple[TileCache, list[str]]:
    """``prepare`` every image of ``manifest``; returns the cache and the skipped images.

    An image in which the engine finds no tissue (``NoTissueError``: at inference it
    would be "not assessed") has no tile to learn from: it is skipped and returned by
    name. Any other failure (unreadable, unsupported, too large) is a ManifestError
    listing every such image, raised before training starts.
    """
    mean = torch.tensor(model.card.normalisation.mean)[:, None, None]
    std = torch.tensor(model.card.normalisation.std)[:, None, None]
    parts: list[torch.Tensor] = []
    counts: list[int] = []
    labels: list[int] = []
    failed: list[str] = []
    skipped: list[str] = []
    for index, row in enumerate(manifest.rows):
        try:
            prepared = prepare(row.path, model, engine)
        except NoTissueError:
            skipped.append(row.image)
        except InputError as exc:
            failed.append(str(exc))
        else:
            # undo the card's normalisation: (T, 3, S, S) back to RGB in [0, 1]
            rgb = prepared.tiles.mul(std).add_(mean).clamp_(0.0, 1.0)
            parts.append(rgb.mul_(255.0).round_().to(torch.uint8))
            counts.append(len(rgb))
            labels.append(row.label)
        if progress is not None:
            progress(index + 1)
    if failed:
        shown = "; ".join(failed[:3]) + (f"; and {len(failed) - 3} more" if len(failed) > 3 else "")
        raise ManifestError(f"{manifest.source}: {len(failed)} image(s) cannot be used: {shown}")
    if not parts or len(set(labels)) < 2:
        raise ManifestError(
            f"{manifest.source}: after skipping {len(skipped)} image(s) without tissue, "
            f"{len(labels)} remain and they do not hold both tumour and benign images"
        )
    if skipped:
        logger.warning("%d image(s) without tissue skipped", len(skipped))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    image_of = np.repeat(np.arange(len(counts)), counts)
    logger.info("cached %d tiles of %d images", offsets[-1], len(counts))
    return TileCache(torch.cat(parts), image_of, np.asarray(labels), offsets), skipped


def aggregate_images(
    cache: TileCache, tile_logits: torch.Tensor, temperature: float, method: str
) -> tuple[np.ndarray, torch.Tensor]:
    """Per image: the engine's aggregated calibrated probability, and the logits (2,) of
    its driving tile (the most probable one; what temperature scaling is fitted on)."""
    probs = torch.softmax(tile_logits.float() / temperature, dim=1)[:, 1].numpy()
    image_p = np.empty(len(cache))
    driving = torch.empty((len(cache), 2))
    for i in range(len(cache)):
        lo, hi = int(cache.offsets[i]), int(cache.offsets[i + 1])
        image_p[i], k = aggregate(probs[lo:hi], method)
        driving[i] = tile_logits[lo + k]
    return image_p, driving
