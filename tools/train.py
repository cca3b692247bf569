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
   decision threshold is chosen there for ``target_sensitivity`` (and, when set,
   ``target_specificity``: midway between the two). The engine's model
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
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from marginwatch.engine.config import Config, load_config
from marginwatch.engine.errors import ConfigError, ModelError
from rich.console import Console
from rich.progress import Progress, TextColumn, TimeRemainingColumn

from ._calibration import Calibration, calibrate
from ._dataset import TileCache, build_cache
from ._input_reference import input_reference
from ._manifest import Manifest
from ._objective import TEMPERATURE_RANGE
from ._options import TrainOptions, preflight
from ._pretrained import load_pretrained
from ._progress import progress_bar
from ._splits import Split
from ._trainer import Trainer

if TYPE_CHECKING:
    from marginwatch.engine.model import Model

__all__ = ["TrainOptions", "TrainResult", "train"]

logger = logging.getLogger(__name__)


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


def _epoch_text(epoch: int, epochs: int) -> str:
    return f"epoch {epoch}/{epochs}"


def _epoch_progress(console: Console) -> Progress:
    """The training bar: epoch, steps over all epochs, elapsed, ETA, loss and val AUC."""
    return progress_bar(
        console,
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        transient=False,
    )


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
    options = options or TrainOptions()
    config = config or load_config()
    console = console or Console(stderr=True)
    started = time.perf_counter()
    out = Path(out)
    device = _device(options.device)
    checkpoint = _check_out(out, resume)

    manifest, split = preflight(manifest_path, options)
    train_idx = _subsample(manifest, split.train, options.max_train_images, options.seed)
    model = _build_model(options, console)
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
    caches, skipped = _read_images(manifest, {"train": train_idx, "val": list(split.val)},
                                   model, engine, console)
    read_seconds = time.perf_counter() - started
    console.print(
        f"tiles: train {len(caches['train'].tiles)}, val {len(caches['val'].tiles)} "
        f"(read in {read_seconds:.0f} s)"
    )

    trainer = Trainer(options, model, caches["train"], caches["val"], engine, device)
    trainer.skipped = skipped
    stopped = trainer.resume(checkpoint, options, manifest.sha256) if resume else None
    if resume:
        console.print(f"resumed after epoch {trainer.epoch} (best val AUC {trainer.best_auc:.3f})")
    _write_split_manifests(out / "splits", manifest, split)
    stopped = _run_epochs(trainer, options, checkpoint, manifest.sha256, stopped, console)
    console.print(
        f"stopped: {stopped}; best val AUC {trainer.best_auc:.3f} at epoch {trainer.best_epoch}"
    )
    return _finalise(
        out, options, manifest, split, trainer, stopped, started, read_seconds, console
    )


def _build_model(options: TrainOptions, console: Console) -> Model:
    """The untrained network the options ask for, from local pretrained weights if given."""
    from marginwatch.engine.model import build_model

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
    return model


def _read_images(
    manifest: Manifest, sets: dict[str, list[int]], model: Model, engine: Any, console: Console
) -> tuple[dict[str, TileCache], dict[str, list[str]]]:
    """Each set's tiles read once (a progress bar per set); the images without tissue."""
    caches: dict[str, TileCache] = {}
    skipped: dict[str, list[str]] = {}
    with progress_bar(console) as bar:
        for name, indices in sets.items():
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
    return caches, skipped


def _run_epochs(
    trainer: Trainer,
    options: TrainOptions,
    checkpoint: Path,
    manifest_sha256: str,
    stopped: str | None,
    console: Console,
) -> str:
    """Epochs until one of the stopping rules says why; a checkpoint after each."""
    loop_started = time.perf_counter()
    previous = sum(h["seconds"] for h in trainer.history)
    with _epoch_progress(console) as bar:
        total_steps = options.epochs * trainer.steps_per_epoch
        task = bar.add_task(
            _epoch_text(trainer.epoch + 1, options.epochs),
            total=total_steps,
            completed=min(total_steps, trainer.epoch * trainer.steps_per_epoch),
            info="",
        )
        while stopped is None:
            if trainer.epoch >= options.epochs:
                stopped = f"reached {options.epochs} epochs"
                break
            bar.update(task, description=_epoch_text(trainer.epoch + 1, options.epochs))
            epoch_started = time.perf_counter()
            loss = trainer.train_epoch(bar, task)
            trainer.recalibrate_batchnorm()
            auc, brier = trainer.validate()
            seconds = time.perf_counter() - epoch_started
            improved = _end_epoch(trainer, loss, auc, brier, seconds)
            bar.update(
                task,
                completed=trainer.epoch * trainer.steps_per_epoch,
                info=f"loss {loss:.4f}  val AUC {auc:.3f}  best {trainer.best_auc:.3f}",
            )
            console.print(
                f"epoch {trainer.epoch:3d}  loss {loss:.4f}  val AUC {auc:.3f}  "
                f"val Brier {brier:.3f}{'  *' if improved else ''}  {seconds:.0f} s"
            )
            if trainer.epoch - trainer.best_epoch >= options.patience:
                stopped = f"early stop: no validation AUC gain for {options.patience} epochs"
            elif (
                options.max_minutes is not None
                and (previous + time.perf_counter() - loop_started) / 60 > options.max_minutes
            ):
                stopped = f"time budget of {options.max_minutes:g} minutes reached"
            trainer.save(checkpoint, options, manifest_sha256, stopped)
    return stopped


def _end_epoch(trainer: Trainer, loss: float, auc: float, brier: float, seconds: float) -> bool:
    """Count the epoch, keep the best weights, add it to the history; True if it improved."""
    trainer.epoch += 1
    improved = not math.isnan(auc) and auc > trainer.best_auc
    if improved:
        trainer.best_auc, trainer.best_epoch = auc, trainer.epoch
        trainer.best_state = {
            k: v.detach().cpu().clone() for k, v in trainer.network.state_dict().items()
        }
    trainer.history.append(
        {
            "epoch": trainer.epoch,
            "loss": round(loss, 5),
            "val_auc": None if math.isnan(auc) else round(auc, 5),
            "val_brier": None if math.isnan(brier) else round(brier, 5),
            "lr": trainer.optimizer.param_groups[0]["lr"],
            "class_weights": trainer.class_weights.state(),
            "seconds": round(seconds, 1),
        }
    )
    return improved


def _finalise(
    out: Path,
    options: TrainOptions,
    manifest: Manifest,
    split: Split,
    trainer: Trainer,
    stopped: str,
    started: float,
    read_seconds: float,
    console: Console,
) -> TrainResult:
    """Best weights -> temperature, threshold, card; write the artefact and training.json."""
    model = trainer.model
    _best_weights_to_cpu(trainer)
    calibration = calibrate(trainer, options.target_sensitivity, console,
                            options.target_specificity)
    _update_card(trainer, options, manifest, split, calibration)
    model.torch_module()
    model.save(out)
    seconds = time.perf_counter() - started
    record = _training_record(
        options, manifest, split, trainer, stopped, calibration, seconds, read_seconds
    )
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    if trainer.history:
        from ._report import plot_learning_curves

        plot_learning_curves(trainer.history, out / "learning-curves.png")
    temperature, threshold = calibration.temperature, calibration.threshold
    val_metrics = calibration.metrics
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


def _best_weights_to_cpu(trainer: Trainer) -> None:
    """The best epoch's weights, on the CPU: the artefact is saved and calibrated from there."""
    if trainer.best_state is not None:
        trainer.network.load_state_dict(trainer.best_state)
    trainer.network.to("cpu")
    trainer.device = torch.device("cpu")
    trainer.mean, trainer.std = trainer.mean.cpu(), trainer.std.cpu()


def _update_card(
    trainer: Trainer,
    options: TrainOptions,
    manifest: Manifest,
    split: Split,
    calibration: Calibration,
) -> None:
    """Calibration, quality thresholds from the train images, and provenance on the card."""
    model, val = trainer.model, trainer.val_set
    description = options.description or (
        f"{options.architecture} trained by marginwatch train on {manifest.describe()}"
    )
    from ._quality_thresholds import thresholds_from_images  # engine.quality's thresholds

    quality = thresholds_from_images(
        [manifest.rows[i].path for i in split.train], model, trainer.engine
    )
    rounded = {
        k: None if math.isnan(v) else round(float(v), 4) for k, v in calibration.metrics.items()
    }
    model.update_card(
        temperature=calibration.temperature,
        threshold=calibration.threshold,
        quality=quality,
        training_data_sha256=manifest.sha256,
        metrics=rounded | {"target_sensitivity": options.target_sensitivity} | (
            {} if options.target_specificity is None
            else {"target_specificity": options.target_specificity}),
        input_reference=input_reference(model, val),  # input-drift monitoring (monitor)
        synthetic_demo=options.synthetic_demo,
        description=description,
        created_utc=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
    )


def _training_record(
    options: TrainOptions,
    manifest: Manifest,
    split: Split,
    trainer: Trainer,
    stopped: str,
    calibration: Calibration,
    seconds: float,
    read_seconds: float,
) -> dict[str, Any]:
    """training.json: options, split, history, calibration and timings of this run."""
    val, val_metrics = trainer.val_set, calibration.metrics
    return {
        "options": options.as_dict(),
        "manifest": manifest.source.name,  # no machine paths in the artefact
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
        "temperature": calibration.temperature,
        "temperature_search_range": list(TEMPERATURE_RANGE),
        "temperature_at_bound": calibration.at_bound,
        "threshold": calibration.threshold,
        "validation": {k: (None if math.isnan(v) else v) for k, v in val_metrics.items()},
        "seconds": {
            "total": round(seconds, 1),
            "reading": round(read_seconds, 1),
            "epochs": round(sum(h["seconds"] for h in trainer.history), 1),
        },
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(trainer.options.device),
        "model_digest": trainer.model.digest,
    }
