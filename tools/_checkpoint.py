"""Resumable training checkpoints: safetensors for tensors, JSON for the rest. Never pickle.

``DIR/checkpoint/``::

    state.json            epoch, best validation AUC, patience, class weights, history,
                          the options and manifest digest the run was started with
    last.safetensors      network weights after the last finished epoch
    best.safetensors      network weights of the best validation AUC so far
    optimizer.safetensors AdamW moments and step counts, plus the RNG states
                          (``rng.torch``, ``rng.sampler``, ``rng.augment`` as uint8)

Each file is written to a temporary name and renamed, state.json last, so an
interrupted save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from marginwatch.engine.errors import ModelError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

__all__ = ["Checkpoint", "load_checkpoint", "save_checkpoint"]

Checkpoint = dict[str, Any]


def _atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(temp))
    os.replace(temp, path)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    state = optimizer.state_dict()
    tensors = {}
    for index, slots in state["state"].items():
        for key, value in slots.items():
            tensors[f"opt.{index}.{key}"] = torch.as_tensor(value).clone()
    groups = [
        {k: list(v) if isinstance(v, tuple) else v for k, v in g.items()}
        for g in state["param_groups"]
    ]
    return tensors, groups


def save_checkpoint(
    folder: Path,
    *,
    network: torch.nn.Module,
    best_state: dict[str, torch.Tensor] | None,
    optimizer: torch.optim.Optimizer,
    generators: dict[str, torch.Generator],
    state: dict[str, Any],
) -> None:
    """Write the checkpoint of a finished epoch (see module docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_save_tensors(network.state_dict(), folder / "last.safetensors")
    if best_state is not None:
        _atomic_save_tensors(best_state, folder / "best.safetensors")
    tensors, groups = _optimizer_tensors(optimizer)
    tensors["rng.torch"] = torch.random.get_rng_state()
    for name, generator in generators.items():
        tensors[f"rng.{name}"] = generator.get_state()
    _atomic_save_tensors(tensors, folder / "optimizer.safetensors")
    temp = folder / ".state.json.tmp"
    temp.write_text(json.dumps({**state, "param_groups": groups}, indent=2) + "\n")
    os.replace(temp, folder / "state.json")


def load_checkpoint(
    folder: Path,
    *,
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generators: dict[str, torch.Generator],
) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
    """Restore network, optimizer and RNGs in place; return (state, best weights or None)."""
    try:
        state = json.loads((folder / "state.json").read_text())
        weights = load_file(str(folder / "last.safetensors"))
        extra = load_file(str(folder / "optimizer.safetensors"))
        best_path = folder / "best.safetensors"
        best = load_file(str(best_path)) if best_path.exists() else None
    except FileNotFoundError as exc:
        raise ModelError(
            f"{folder}: incomplete checkpoint ({exc.filename} missing); cannot resume"
        ) from exc
    except (json.JSONDecodeError, SafetensorError, OSError) as exc:
        raise ModelError(f"{folder}: unreadable checkpoint: {exc}") from exc
    network.load_state_dict(weights, strict=True)
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in extra.items():
        if key.startswith("opt."):
            _, index, name = key.split(".", 2)
            slots.setdefault(int(index), {})[name] = value
    groups = state.pop("param_groups")
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": slots, "param_groups": groups})
    torch.random.set_rng_state(extra["rng.torch"])
    for name, generator in generators.items():
        generator.set_state(extra[f"rng.{name}"])
    return state, best
