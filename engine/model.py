"""The model: a torchvision backbone with the GAP -> dropout -> linear head, and its artefact.

An artefact is a folder::

    model.json            the ModelCard (engine.card)
    weights.safetensors   the state dict, float32 or float16 (loaded as float32)

Loading never unpickles. The artefact's identity is its digest, the SHA-256 of the
``sha256sum``-style manifest of both files, so anyone can check it with::

    cd MODEL_DIR && sha256sum model.json weights.safetensors | sha256sum
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from ._backbones import MarginNet, build_network
from .card import ARCHITECTURES, CARD_FILENAME, WEIGHTS_FILENAME, ModelCard, read_card
from .errors import ModelCardError, ModelError
from .inference import TUMOUR, Inference, make_inference
from .normalisation import normalise_tiles

__all__ = ["Model", "artefact_digest", "build_model", "load_model"]

logger = logging.getLogger(__name__)


def artefact_digest(card_bytes: bytes, weights_bytes: bytes) -> str:
    """SHA-256 of ``sha256sum model.json weights.safetensors`` output (see module docstring)."""
    manifest = (
        f"{hashlib.sha256(card_bytes).hexdigest()}  {CARD_FILENAME}\n"
        f"{hashlib.sha256(weights_bytes).hexdigest()}  {WEIGHTS_FILENAME}\n"
    )
    return hashlib.sha256(manifest.encode("ascii")).hexdigest()


class Model:
    """A network plus its card. Build with :func:`build_model` or :func:`load_model`."""

    def __init__(
        self,
        card: ModelCard,
        network: MarginNet,
        *,
        digest: str | None = None,
        path: Path | None = None,
    ) -> None:
        self._card = card
        self._network = network.eval()
        self._digest = digest
        self.path = path

    # --- card ---------------------------------------------------------------------
    @property
    def card(self) -> ModelCard:
        return self._card

    @card.setter
    def card(self, card: ModelCard) -> None:
        """Replace the card (e.g. after calibration); the architecture cannot change."""
        if card.architecture != self._card.architecture:
            raise ModelCardError(
                f"card architecture {card.architecture!r} does not match the network "
                f"({self._card.architecture!r})"
            )
        self._card = card
        self._digest = None

    def update_card(self, **changes: Any) -> ModelCard:
        """Validate and apply card fields, e.g. ``update_card(temperature=1.7, threshold=0.4)``."""
        try:
            self.card = ModelCard.model_validate({**self._card.model_dump(), **changes})
        except ValidationError as exc:
            raise ModelCardError(f"invalid model card change {changes}: {exc}") from exc
        return self._card

    # --- network ------------------------------------------------------------------
    def torch_module(self) -> MarginNet:
        """The ``nn.Module`` in eval mode; ``forward`` returns logits (N, 2)."""
        return self._network.eval()

    def train_module(self) -> MarginNet:
        """The same module in train mode (training code); call :meth:`torch_module` after."""
        self._digest = None
        return self._network.train()

    def target_layer(self) -> nn.Module:
        """The module whose output (N, K, h, w) is Grad-CAM's feature map."""
        return self._network.features

    def tumour_weight(self) -> torch.Tensor:
        """Row of the last linear layer for the tumour class, shape (K,)."""
        return self._network.classifier.weight[TUMOUR].detach()

    @property
    def device(self) -> torch.device:
        return next(self._network.parameters()).device

    @torch.inference_mode()
    def infer(self, batch: torch.Tensor) -> Inference:
        """(N, 3, H, W) batch -> :class:`Inference` (module's device, fp32).

        The batch is normalised float, or uint8 RGB that is normalised here as the card
        says (engine.normalisation), exactly as the backends do.
        """
        module = self.torch_module()
        started = time.perf_counter()
        batch = normalise_tiles(batch.to(self.device), self._card.normalisation)
        logits, feature_map = module.forward_features(batch.to(torch.float32))
        return make_inference(
            logits,
            feature_map,
            self.tumour_weight(),
            self._card.temperature,
            backend="torch",
            device=str(self.device),
            precision="fp32",
            forward_seconds=time.perf_counter() - started,
        )

    # --- artefact -----------------------------------------------------------------
    def _serialise(self, dtype: Literal["float32", "float16"]) -> tuple[bytes, bytes, ModelCard]:
        card = self._card.model_copy(update={"weights_dtype": dtype})
        target = torch.float16 if dtype == "float16" else torch.float32
        tensors = {}
        for name, value in self._network.state_dict().items():
            value = value.detach().cpu()
            if value.is_floating_point():
                value = value.to(target)
            tensors[name] = value.contiguous().clone()
        metadata = {
            "format": "pt",
            "architecture": card.architecture,
            "marginwatch_format": str(card.format_version),
        }
        weights = save_safetensors(tensors, metadata=metadata)
        return card.to_json().encode("utf-8"), weights, card

    @property
    def digest(self) -> str:
        """SHA-256 identity of the artefact (of what :meth:`save` writes as float32 if unsaved)."""
        if self._digest is None:
            card_bytes, weights, _ = self._serialise(self._card.weights_dtype)
            return artefact_digest(card_bytes, weights)
        return self._digest

    def save(
        self, path: str | os.PathLike[str], *, dtype: Literal["float32", "float16"] | None = None
    ) -> Path:
        """Write the artefact folder; ``dtype="float16"`` halves the file (loads as float32)."""
        folder = Path(path)
        card_bytes, weights, card = self._serialise(dtype or self._card.weights_dtype)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for name, data in ((WEIGHTS_FILENAME, weights), (CARD_FILENAME, card_bytes)):
                temp = folder / f".{name}.tmp"
                temp.write_bytes(data)
                os.replace(temp, folder / name)
        except OSError as exc:
            raise ModelError(f"{folder}: cannot write the model artefact: {exc}") from exc
        self._card = card
        self._digest = artefact_digest(card_bytes, weights)
        self.path = folder
        logger.info(
            "saved model %s (%s, %s) ", self._digest[:12], card.architecture, card.weights_dtype
        )
        return folder


def build_model(arch: str, **options: Any) -> Model:
    """A fresh, randomly initialised model; ``options`` are :class:`ModelCard` fields."""
    if arch not in ARCHITECTURES:
        raise ModelError(
            f"unknown architecture {arch!r}; expected one of {', '.join(ARCHITECTURES)}"
        )
    try:
        card = ModelCard.model_validate({**options, "architecture": arch})
    except ValidationError as exc:
        raise ModelCardError(f"invalid model options for {arch}: {exc}") from exc
    return Model(card, build_network(arch, card.dropout))


def load_model(path: str | os.PathLike[str]) -> Model:
    """Load an artefact folder; :class:`ModelCardError` when card and weights disagree."""
    folder = Path(path)
    try:
        is_folder = stat.S_ISDIR(folder.stat().st_mode)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ModelError(f"{folder}: model folder not found") from exc
    except OSError as exc:  # permission denied on a folder above, a name too long, ...
        raise ModelError(f"{folder}: cannot open the model folder: {exc.strerror or exc}") from exc
    if not is_folder:
        raise ModelError(
            f"{folder}: not a folder; expected a model folder with "
            f"{CARD_FILENAME} and {WEIGHTS_FILENAME}"
        )
    card = read_card(folder)
    try:
        card_bytes = (folder / CARD_FILENAME).read_bytes()
    except OSError as exc:  # replaced or made unreadable since read_card
        raise ModelError(f"{folder / CARD_FILENAME}: cannot read: {exc.strerror or exc}") from exc
    weights_path = folder / WEIGHTS_FILENAME
    try:
        weights_bytes = weights_path.read_bytes()
    except FileNotFoundError as exc:
        raise ModelError(f"{folder}: no {WEIGHTS_FILENAME}; expected a model folder") from exc
    except OSError as exc:
        raise ModelError(f"{weights_path}: cannot read: {exc.strerror or exc}") from exc
    try:
        tensors = load_safetensors(weights_bytes)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{weights_path}: not a readable safetensors file: {exc}") from exc
    network = build_network(card.architecture, card.dropout)
    _check_agreement(weights_path, card, network, tensors)
    expected = network.state_dict()
    state = {k: v.to(expected[k].dtype) for k, v in tensors.items()}
    network.load_state_dict(state, strict=True)
    model = Model(card, network, digest=artefact_digest(card_bytes, weights_bytes), path=folder)
    logger.info("loaded model %s (%s)", model.digest[:12], card.architecture)
    return model


def _check_agreement(
    where: Path, card: ModelCard, network: MarginNet, tensors: dict[str, torch.Tensor]
) -> None:
    expected = network.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ModelCardError(
            f"{where}: weights do not match architecture {card.architecture!r} in {CARD_FILENAME}: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:3]})"
        )
    for name, value in tensors.items():
        if tuple(value.shape) != tuple(expected[name].shape):
            raise ModelCardError(
                f"{where}: tensor {name} has shape {tuple(value.shape)}; architecture "
                f"{card.architecture!r} in {CARD_FILENAME} expects {tuple(expected[name].shape)}"
            )
        if (
            value.is_floating_point()
            and str(value.dtype).removeprefix("torch.") != card.weights_dtype
        ):
            raise ModelCardError(
                f"{where}: tensor {name} is {str(value.dtype).removeprefix('torch.')}; "
                f"{CARD_FILENAME} says weights_dtype={card.weights_dtype!r}"
            )
