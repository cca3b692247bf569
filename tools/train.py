"""``marginwatch train MANIFEST --out DIR``: the paper's training recipe, resumable.

1. The manifest is validated (engine ``ManifestError`` lists every problem), split by
   patient into train / validation / test (stratified by label; no patient in two
   splits, asserted), and every image is read and tiled by the engine's ``prepare``
   (tools/_dataset.py) before the first step, so bad input fails in seconds.
2. Each epoch draws as many images as the train split holds with a
   ``WeightedRandomSampler`` (each class half the draws), one random tile per draw,
   augments it (tools/_augment.py), and minimises focal loss with label smoothing and
   adaptive class weights (tools/_objective.py) with AdamW under a cosine schedule
   (linear warm-up over the first epoch). The head has dropout (model card).
3. After each epoch: validation AUC at image level (engine aggregation); the best
   weights are kept; training stops after ``patience`` epochs without improvement, at
   ``epochs``, or at the first epoch end past ``max_minutes``. A checkpoint
   (safetensors + JSON, tools/_checkpoint.py) is written after every epoch;
   ``--resume`` continues from it with the same RNG streams.
4. The best weights are calibrated on validation (temperature scaling) and a
   decision threshold is chosen there for ``target_sensitivity``. The engine's model
   artefact (model.json + weights.safetensors) is written to DIR, with
   ``training.json`` (options, split, history) and the split manifests under
   ``DIR/splits/`` (evaluate the test split with ``marginwatch evaluate DIR
   DIR/splits/test.csv``).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from marginwatch.engine.config import Config, EngineConfig, load_config
from marginwatch.engine.errors import ConfigError, ModelError
from rich.console import Console
from rich.progress import Progress, TextColumn

from . import metrics
from ._augment import Augmentation
from ._checkpoint import load_checkpoint, save_checkpoint
from ._dataset import TileCache, aggregate_images, build_cache
from ._input_reference import input_reference
from ._manifest import Manifest
from ._objective import AdaptiveClassWeights, FocalLoss, fit_temperature
from ._options import TrainOptions, preflight
from ._pretrained import load_pretrained
from ._progress import progress_bar
from ._splits import Split

__all__ = ["TrainOptions", "TrainResult", "train"]

logger = logging.getLogger(__name__)

# Options that must match for --resume to continue a run (the rest may change).
_RESUME_KEYS = (
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
)


@dataclass(frozen=True)
class TrainResult:
    out: Path
    epochs_run: int
    best_epoch: int
    best_val_auc: float
    temperature: float
    threshold: float
    seconds: float
    stopped: str


def _device(name: str) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA GPU is available to torch; use --device cpu")
        return torch.device("cuda")
    raise ConfigError(f"--device {name!r}: expected cpu or cuda")


def _write_split_manifests(folder: Path, manifest: Manifest, split: Split) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train", "val", "test"):
        indices = split.indices(name)
        if not indices:
            continue
        with (folder / f"{name}.csv").open("w", newline="") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(["path", "label", "patient_id", "centre"])
            for i in indices:
                row = manifest.rows[i]
                rel = os.path.relpath(row.path.resolve(), folder.resolve())
                writer.writerow(
                    [
                        Path(rel).as_posix(),
                        "tumour" if row.label else "benign",
                        row.patient,
                        row.centre,
                    ]
                )


def _subsample(
    manifest: Manifest, indices: tuple[int, ...], limit: int | None, seed: int
) -> list[int]:
    """At most ``limit`` train images, every tumour image kept first (they are scarce)."""
    chosen = list(indices)
    if limit is None or len(chosen) <= limit:
        return chosen
    rng = np.random.default_rng(seed)
    pos = [i for i in chosen if manifest.rows[i].label == 1]
    neg = [i for i in chosen if manifest.rows[i].label == 0]
    keep_pos = pos[: max(1, min(len(pos), limit // 2))]
    keep_neg = list(rng.choice(neg, size=max(1, limit - len(keep_pos)), replace=False))
    return sorted(keep_pos + [int(i) for i in keep_neg])


class _Trainer:
    """The loop over epochs; state that a checkpoint must carry lives here."""

    def __init__(
        self,
        options: TrainOptions,
        model: Any,
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
        self.augment = Augmentation() if options.augment else Augmentation.none()
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
        """
        norms = [
            m
            for m in self.network.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        ]
        if not norms:
            return
        generator = torch.Generator().manual_seed(self.options.seed * 100_003 + self.epoch)
        count = min(len(self.train_set.tiles), batches * self.options.batch_size)
        chosen = torch.randperm(len(self.train_set.tiles), generator=generator)[:count]
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

    def validate(self) -> tuple[float, np.ndarray]:
        logits = self.tile_logits(self.val_set)
        image_p, _ = aggregate_images(self.val_set, logits, 1.0, self.engine.aggregation)
        return metrics.roc_auc(self.val_set.labels, image_p), image_p

    def train_epoch(self, progress: Progress, task: Any) -> float:
        network = self.model.train_module()
        draws = self._draws()
        total, seen = 0.0, 0
        progress.reset(task, total=self.steps_per_epoch, description=f"epoch {self.epoch + 1}")
        for step in range(self.steps_per_epoch):
            images = draws[step * self.options.batch_size : (step + 1) * self.options.batch_size]
            if not images:
                break
            tiles = [self.train_set.random_tile(i, self.sampler_rng) for i in images]
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
        changed = [k for k in _RESUME_KEYS if state["options"].get(k) != getattr(options, k)]
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


def _check_out(out: Path, resume: bool) -> Path:
    checkpoint = out / "checkpoint"
    if resume and not (checkpoint / "state.json").exists():
        raise ModelError(f"{out}: no checkpoint to resume (expected {checkpoint}/state.json)")
    if not resume and out.exists() and any(out.iterdir()):
        raise ModelError(
            f"{out}: already exists and is not empty; pass --resume to continue "
            "its training or choose another --out"
        )
    return checkpoint


def train(
    manifest_path: str | Path,
    out: str | Path,
    options: TrainOptions | None = None,
    *,
    resume: bool = False,
    config: Config | None = None,
    console: Console | None = None,
) -> TrainResult:
    """Train a margin model on ``manifest_path`` into the artefact folder ``out``."""
    from marginwatch.engine.model import build_model

    options = options or TrainOptions()
    config = config or load_config()
    console = console or Console(stderr=True)
    started = time.perf_counter()
    out = Path(out)
    device = _device(options.device)
    checkpoint = _check_out(out, resume)

    manifest, split = preflight(manifest_path, options)
    train_idx = _subsample(manifest, split.train, options.max_train_images, options.seed)
    torch.manual_seed(options.seed)
    model = build_model(
        options.architecture,
        input_size_px=options.input_size_px,
        um_per_px=options.um_per_px,
        device_profile={"kind": options.profile},
        dropout=options.dropout,
        synthetic_demo=options.synthetic_demo,
    )
    if options.pretrained:
        loaded = load_pretrained(model.torch_module(), Path(options.pretrained))
        console.print(f"pretrained: {loaded} tensors from {options.pretrained}")
    console.print(
        f"manifest: {manifest.describe()}; split (patients) "
        + ", ".join(
            f"{n} {len(split.indices(n))} images/{len(p)} patients"
            for n, p in split.as_dict(manifest).items()
        )
    )
    if len(train_idx) < len(split.train):
        console.print(
            f"train subsample: {len(train_idx)} of {len(split.train)} images "
            f"(--max-train-images {options.max_train_images})"
        )

    engine = config.engine
    caches = {}
    skipped: dict[str, list[str]] = {}
    with progress_bar(console) as bar:
        for name, indices in (("train", train_idx), ("val", list(split.val))):
            task = bar.add_task(f"reading {name} images", total=len(indices))
            caches[name], skipped[name] = build_cache(
                manifest.subset(indices),
                model,
                engine,
                lambda done, t=task: bar.update(t, completed=done),
            )
    for name, images in skipped.items():
        if images:
            console.print(
                f"[yellow]skipped {len(images)} {name} image(s) without tissue "
                f"(the engine would not assess them): {', '.join(images[:5])}"
            )
    read_seconds = time.perf_counter() - started
    console.print(
        f"tiles: train {len(caches['train'].tiles)}, val {len(caches['val'].tiles)} "
        f"(read in {read_seconds:.0f} s)"
    )

    trainer = _Trainer(options, model, caches["train"], caches["val"], engine, device)
    trainer.skipped = skipped
    stopped = trainer.resume(checkpoint, options, manifest.sha256) if resume else None
    if resume:
        console.print(f"resumed after epoch {trainer.epoch} (best val AUC {trainer.best_auc:.3f})")
    _write_split_manifests(out / "splits", manifest, split)
    loop_started = time.perf_counter()
    previous = sum(h["seconds"] for h in trainer.history)
    with progress_bar(console, TextColumn("{task.fields[info]}"), transient=False) as bar:
        task = bar.add_task("epoch", total=trainer.steps_per_epoch, info="")
        while stopped is None:
            if trainer.epoch >= options.epochs:
                stopped = f"reached {options.epochs} epochs"
                break
            epoch_started = time.perf_counter()
            loss = trainer.train_epoch(bar, task)
            trainer.recalibrate_batchnorm()
            auc, _ = trainer.validate()
            trainer.epoch += 1
            improved = not math.isnan(auc) and auc > trainer.best_auc
            if improved:
                trainer.best_auc, trainer.best_epoch = auc, trainer.epoch
                trainer.best_state = {
                    k: v.detach().cpu().clone() for k, v in trainer.network.state_dict().items()
                }
            seconds = time.perf_counter() - epoch_started
            trainer.history.append(
                {
                    "epoch": trainer.epoch,
                    "loss": round(loss, 5),
                    "val_auc": None if math.isnan(auc) else round(auc, 5),
                    "lr": trainer.optimizer.param_groups[0]["lr"],
                    "class_weights": trainer.class_weights.state(),
                    "seconds": round(seconds, 1),
                }
            )
            bar.update(
                task, info=f"loss {loss:.4f}  val AUC {auc:.3f}  best {trainer.best_auc:.3f}"
            )
            console.print(
                f"epoch {trainer.epoch:3d}  loss {loss:.4f}  val AUC {auc:.3f}"
                f"{'  *' if improved else ''}  {seconds:.0f} s"
            )
            if trainer.epoch - trainer.best_epoch >= options.patience:
                stopped = f"early stop: no validation AUC gain for {options.patience} epochs"
            elif (
                options.max_minutes is not None
                and (previous + time.perf_counter() - loop_started) / 60 > options.max_minutes
            ):
                stopped = f"time budget of {options.max_minutes:g} minutes reached"
            trainer.save(checkpoint, options, manifest.sha256, stopped)
    console.print(
        f"stopped: {stopped}; best val AUC {trainer.best_auc:.3f} at epoch {trainer.best_epoch}"
    )
    return _finalise(
        out, options, manifest, split, trainer, stopped, started, read_seconds, console
    )


def _finalise(
    out: Path,
    options: TrainOptions,
    manifest: Manifest,
    split: Split,
    trainer: _Trainer,
    stopped: str,
    started: float,
    read_seconds: float,
    console: Console,
) -> TrainResult:
    """Best weights -> temperature, threshold, card; write the artefact and training.json."""
    model = trainer.model
    if trainer.best_state is not None:
        trainer.network.load_state_dict(trainer.best_state)
    trainer.network.to("cpu")
    trainer.device = torch.device("cpu")
    trainer.mean, trainer.std = trainer.mean.cpu(), trainer.std.cpu()
    val = trainer.val_set
    logits = trainer.tile_logits(val)
    _, driving = aggregate_images(val, logits, 1.0, trainer.engine.aggregation)
    temperature = fit_temperature(driving, torch.as_tensor(val.labels))
    val_p, _ = aggregate_images(val, logits, temperature, trainer.engine.aggregation)
    threshold = metrics.threshold_for_sensitivity(val.labels, val_p, options.target_sensitivity)
    threshold = float(np.clip(threshold if not math.isnan(threshold) else 0.5, 1e-4, 1 - 1e-4))
    decisions = val_p >= threshold
    val_metrics = {
        "val_auc": metrics.roc_auc(val.labels, val_p),
        "val_brier": metrics.brier_score(val.labels, val_p),
        "val_ece": metrics.expected_calibration_error(val.labels, val_p),
        "val_sensitivity": metrics.sensitivity(val.labels, decisions),
        "val_specificity": metrics.specificity(val.labels, decisions),
    }
    description = options.description or (
        f"{options.architecture} trained by marginwatch train on {manifest.describe()}"
    )
    from ._quality_thresholds import thresholds_from_images  # engine.quality's thresholds

    quality = thresholds_from_images(
        [manifest.rows[i].path for i in split.train], model, trainer.engine
    )
    model.update_card(
        temperature=temperature,
        threshold=threshold,
        quality=quality,
        training_data_sha256=manifest.sha256,
        metrics={k: None if math.isnan(v) else round(float(v), 4) for k, v in val_metrics.items()}
        | {"target_sensitivity": options.target_sensitivity},
        input_reference=input_reference(model, val),  # input-drift monitoring (monitor)
        synthetic_demo=options.synthetic_demo,
        description=description,
        created_utc=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
    )
    model.torch_module()
    model.save(out)
    seconds = time.perf_counter() - started
    record = {
        "options": options.as_dict(),
        "manifest": str(manifest.source),
        "manifest_sha256": manifest.sha256,
        "split_patients": split.as_dict(manifest),
        "split_images": {n: len(split.indices(n)) for n in ("train", "val", "test")},
        "train_images_used": len(trainer.train_set),
        "skipped_without_tissue": trainer.skipped,
        "tiles": {"train": len(trainer.train_set.tiles), "val": len(val.tiles)},
        "roi_policy": "one random engine tile per drawn image; validation aggregates all tiles "
        f"({trainer.engine.aggregation})",
        "history": trainer.history,
        "best_epoch": trainer.best_epoch,
        "stopped": stopped,
        "temperature": temperature,
        "threshold": threshold,
        "validation": {k: (None if math.isnan(v) else v) for k, v in val_metrics.items()},
        "seconds": {
            "total": round(seconds, 1),
            "reading": round(read_seconds, 1),
            "epochs": round(sum(h["seconds"] for h in trainer.history), 1),
        },
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(trainer.options.device),
        "model_digest": model.digest,
    }
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    console.print(
        f"model: {out} (digest {model.digest[:12]}), temperature {temperature:.3f}, "
        f"threshold {threshold:.4f}, val sensitivity {val_metrics['val_sensitivity']:.3f}, "
        f"specificity {val_metrics['val_specificity']:.3f}; {seconds / 60:.1f} min"
    )
    return TrainResult(
        out,
        trainer.epoch,
        trainer.best_epoch,
        trainer.best_auc,
        temperature,
        threshold,
        seconds,
        stopped,
    )
