"""The training loop's state: network, optimiser, sampler, tile choice, validation.

:class:`Trainer` owns everything a checkpoint must carry (tools/_checkpoint.py) and the
pieces of one epoch; tools/train.py drives it and writes the artefact.

Tile choice for image-level labels (``tile_selection``):

- ``random``: each draw trains on one of the image's tiles at random, with the image's
  label (the paper's one-ROI-per-image policy; right when one tile covers the region
  that decides the label);
- ``top``: multiple-instance learning (max pooling over tiles, the rule the engine
  aggregates with): from the second epoch on, each draw trains on the image's tile that
  the current network scores highest for tumour. A positive image is positive because
  of some tile, and the most suspicious tile of a negative image is its hardest
  negative. Images with one tile are unaffected, and the scoring pass only runs over
  images with several tiles.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from marginwatch.engine.config import EngineConfig
from marginwatch.engine.errors import ModelError
from marginwatch.engine.model import Model
from rich.progress import Progress, TaskID

from . import metrics
from ._augment import Augmentation
from ._checkpoint import load_checkpoint, save_checkpoint
from ._dataset import TileCache, aggregate_images
from ._objective import AdaptiveClassWeights, FocalLoss
from ._options import TrainOptions

__all__ = ["RESUME_KEYS", "Trainer"]

# Options that must match for --resume to continue a run (the rest may change).
RESUME_KEYS = (
    "architecture",
    "input_size_px",
    "um_per_px",
    "profile",
    "dropout",
    "batch_size",
    "lr",
    "weight_decay",
    "focal_gamma",
    "label_smoothing",
    "val_fraction",
    "test_fraction",
    "seed",
    "max_train_images",
    "tile_selection",
    "stain_jitter",
    "intensity_jitter",
)


class Trainer:
    """The loop over epochs; state that a checkpoint must carry lives here."""

    def __init__(
        self,
        options: TrainOptions,
        model: Model,
        train: TileCache,
        val: TileCache,
        engine: EngineConfig,
        device: torch.device,
    ) -> None:
        self.options = options
        self.model = model
        self.train_set = train
        self.val_set = val
        self.engine = engine
        self.device = device
        self.network = model.train_module().to(device)
        self.optimizer = torch.optim.AdamW(
            self.network.parameters(), lr=options.lr, weight_decay=options.weight_decay
        )
        self.loss = FocalLoss(options.focal_gamma, options.label_smoothing)
        counts = np.bincount(train.labels, minlength=2)
        self.class_weights = AdaptiveClassWeights((int(counts[0]), int(counts[1])))
        self.sampler_rng = torch.Generator().manual_seed(options.seed)
        self.augment_rng = torch.Generator().manual_seed(options.seed + 1)
        self.augment = (
            Augmentation(stain=options.stain_jitter, intensity=options.intensity_jitter)
            if options.augment
            else Augmentation.none()
        )
        card = model.card
        self.mean = torch.tensor(card.normalisation.mean, device=device)[:, None, None]
        self.std = torch.tensor(card.normalisation.std, device=device)[:, None, None]
        self.steps_per_epoch = max(1, math.ceil(len(train) / options.batch_size))
        self.epoch = 0
        self.best_auc = -math.inf
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[dict[str, Any]] = []
        self.skipped: dict[str, list[str]] = {}
        self.top_tile: np.ndarray | None = None  # (N,) tile index per image ("top")

    # --- pieces -------------------------------------------------------------------
    def _lr(self, step: int) -> float:
        """Linear warm-up over the first epoch, then cosine decay to 1 % at the end."""
        total = self.options.epochs * self.steps_per_epoch
        if step < self.steps_per_epoch:
            return self.options.lr * (step + 1) / self.steps_per_epoch
        progress = (step - self.steps_per_epoch) / max(1, total - self.steps_per_epoch)
        return self.options.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    def _normalise(self, rgb_uint8: torch.Tensor) -> torch.Tensor:
        return (rgb_uint8.to(self.device).float() / 255.0 - self.mean) / self.std

    def _draws(self) -> list[int]:
        """Image indices of one epoch: each class drawn with equal probability."""
        labels = self.train_set.labels
        counts = np.bincount(labels, minlength=2).astype(float)
        weights = torch.tensor(1.0 / counts[labels], dtype=torch.double)
        sampler = torch.utils.data.WeightedRandomSampler(
            weights, num_samples=len(labels), replacement=True, generator=self.sampler_rng
        )
        return list(sampler)

    @torch.inference_mode()
    def tile_logits(self, cache: TileCache) -> torch.Tensor:
        """(M, 2) logits of every cached tile, eval mode, no augmentation."""
        network = self.model.torch_module()
        out = []
        for start in range(0, len(cache.tiles), self.options.batch_size * 2):
            batch = self._normalise(cache.tiles[start : start + self.options.batch_size * 2])
            out.append(network(batch).float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def recalibrate_batchnorm(self, batches: int = 8) -> None:
        """Re-estimate BatchNorm running statistics with the current weights ("precise BN").

        The running averages of a network trained from scratch lag far behind its
        weights for the first hundreds of steps (they start at mean 0, variance 1), and
        in eval mode that lag can collapse every input to the same output. Before each
        validation the statistics are reset and averaged over ``batches`` batches of
        un-augmented training tiles (a seeded draw per epoch), so evaluation, temperature
        scaling and the saved model use statistics that match the weights.

        The tiles are drawn from those training steps use: every tile with random
        selection, each image's top tile with ``tile_selection="top"``. The network's
        weights were fitted under batch statistics of top tiles (the most tumour-like of
        each image); statistics over all tiles, most of them plain stroma, shift every
        logit in eval mode and leave the image-level maximum offset for benign images.
        """
        norms = [
            m
            for m in self.network.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        ]
        if not norms:
            return
        generator = torch.Generator().manual_seed(self.options.seed * 100_003 + self.epoch)
        pool = (
            torch.arange(len(self.train_set.tiles))
            if self.top_tile is None
            else torch.as_tensor(self.top_tile, dtype=torch.long)
        )
        count = min(len(pool), batches * self.options.batch_size)
        chosen = pool[torch.randperm(len(pool), generator=generator)[:count]]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
        self.network.train()
        for start in range(0, count, self.options.batch_size):
            self.network(
                self._normalise(
                    self.train_set.tiles[chosen[start : start + self.options.batch_size]]
                )
            )
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        self.network.eval()

    def validate(self) -> tuple[float, float]:
        """Validation AUC and Brier score (temperature 1) at image level."""
        logits = self.tile_logits(self.val_set)
        image_p, _ = aggregate_images(self.val_set, logits, 1.0, self.engine.aggregation)
        labels = self.val_set.labels
        return metrics.roc_auc(labels, image_p), metrics.brier_score(labels, image_p)

    @torch.inference_mode()
    def choose_tiles(self) -> None:
        """``tile_selection="top"``: each image's most tumour-like tile, by the current
        network in eval mode (from the second epoch; images with one tile skip it)."""
        cache = self.train_set
        counts = np.diff(cache.offsets)
        if self.options.tile_selection != "top" or self.epoch == 0 or counts.max() <= 1:
            self.top_tile = None
            return
        top = cache.offsets[:-1].copy()
        network = self.model.torch_module()
        for i in np.nonzero(counts > 1)[0]:
            lo, hi = int(cache.offsets[i]), int(cache.offsets[i + 1])
            logits = network(self._normalise(cache.tiles[lo:hi])).float()
            top[i] = lo + int(torch.argmax(logits[:, 1] - logits[:, 0]))
        self.top_tile = top

    def _tile_of(self, image: int) -> int:
        if self.top_tile is not None:
            return int(self.top_tile[image])
        return self.train_set.random_tile(image, self.sampler_rng)

    def train_epoch(self, progress: Progress, task: TaskID) -> float:
        """One epoch of steps; ``task`` advances by one per step. Returns the mean loss."""
        self.choose_tiles()
        network = self.model.train_module()
        draws = self._draws()
        total, seen = 0.0, 0
        for step in range(self.steps_per_epoch):
            images = draws[step * self.options.batch_size : (step + 1) * self.options.batch_size]
            if not images:
                break
            tiles = [self._tile_of(i) for i in images]
            rgb = self.augment(self.train_set.tiles[tiles].float() / 255.0, self.augment_rng)
            batch = ((rgb.to(self.device) - self.mean) / self.std).contiguous()
            labels = torch.as_tensor(
                self.train_set.labels[images], dtype=torch.long, device=self.device
            )
            for group in self.optimizer.param_groups:
                group["lr"] = self._lr(self.epoch * self.steps_per_epoch + step)
            logits = network(batch)
            per_sample = self.loss.per_sample(
                logits, labels, self.class_weights.tensor().to(self.device)
            )
            loss = per_sample.mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            with torch.no_grad():
                unweighted = self.loss.per_sample(
                    logits.detach(), labels, torch.ones(2, device=self.device)
                )
            self.class_weights.observe(unweighted, labels)
            total += float(loss.detach()) * len(images)
            seen += len(images)
            progress.update(task, advance=1)
        self.class_weights.end_epoch()
        return total / max(1, seen)

    # --- checkpoints ----------------------------------------------------------------
    def state(
        self, options: TrainOptions, manifest_sha256: str, stopped: str | None
    ) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "best_auc": self.best_auc if math.isfinite(self.best_auc) else None,
            "best_epoch": self.best_epoch,
            "class_weights": self.class_weights.state(),
            "history": self.history,
            "options": options.as_dict(),
            "manifest_sha256": manifest_sha256,
            "stopped": stopped,
        }

    def save(
        self, folder: Path, options: TrainOptions, manifest_sha256: str, stopped: str | None
    ) -> None:
        save_checkpoint(
            folder,
            network=self.network,
            best_state=self.best_state,
            optimizer=self.optimizer,
            generators={"sampler": self.sampler_rng, "augment": self.augment_rng},
            state=self.state(options, manifest_sha256, stopped),
        )

    def resume(self, folder: Path, options: TrainOptions, manifest_sha256: str) -> str | None:
        state, best = load_checkpoint(
            folder,
            network=self.network,
            optimizer=self.optimizer,
            generators={"sampler": self.sampler_rng, "augment": self.augment_rng},
        )
        if state["manifest_sha256"] != manifest_sha256:
            raise ModelError(
                f"{folder}: the checkpoint was trained on another manifest; cannot resume"
            )
        changed = [k for k in RESUME_KEYS if state["options"].get(k) != getattr(options, k)]
        if changed:
            before = ", ".join(f"{k}={state['options'].get(k)!r}" for k in changed)
            raise ModelError(
                f"{folder}: cannot resume with different {', '.join(changed)} "
                f"(checkpoint: {before})"
            )
        self.epoch = state["epoch"]
        self.best_auc = state["best_auc"] if state["best_auc"] is not None else -math.inf
        self.best_epoch = state["best_epoch"]
        self.class_weights.load_state(state["class_weights"])
        self.history = state["history"]
        self.best_state = best
        stopped = state.get("stopped")
        # A time budget pauses a run; --resume is the request to go on.
        return None if stopped and stopped.startswith("time budget") else stopped
