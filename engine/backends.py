"""Inference backends: one algorithm in the base class, one narrow hook per device.

:class:`Backend.infer` owns the algorithm (forward, calibration, exact Grad-CAM via
:func:`~marginwatch.engine.inference.make_inference`); a subclass implements only
``_forward(batch) -> (logits (N, 2), feature_map (N, K, h, w))``.

Tiles may arrive as uint8 RGB ``(N, 3, H, W)``: the base class moves them to the
backend's input device (pinned and asynchronous on CUDA: a quarter of float32's
traffic) and normalises them there as the model card says, so every ``_forward`` (the
ONNX graph and TensorRT engine included) still receives normalised float32. Float
batches are taken as normalised already and passed through as before.

Backends register themselves by name (:func:`register_backend`). ``torch-cpu`` and
``torch-cuda`` live here; ``engine/tensorrt_backend.py`` (a later issue) registers
``tensorrt`` when imported, and :func:`select_backend` imports it when it exists.
``auto`` resolves to tensorrt (importable and a CUDA GPU present), else torch-cuda,
else torch-cpu; the choice is made once and logged once.
"""

from __future__ import annotations

import abc
import copy
import importlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ._memory import release_freed_memory
from .config import Config, EngineConfig
from .errors import BackendError
from .inference import Inference, make_inference
from .model import Model
from .normalisation import normalise_tiles

__all__ = [
    "Backend",
    "TorchCPUBackend",
    "TorchCUDABackend",
    "available_backends",
    "register_backend",
    "select_backend",
]

logger = logging.getLogger(__name__)

# Modules that register further backends when imported; missing ones are skipped.
PLUGIN_MODULES = ("marginwatch.engine.tensorrt_backend",)
AUTO_ORDER = ("tensorrt", "torch-cuda", "torch-cpu")


class Backend(abc.ABC):
    """Runs a model on one device. Subclasses implement :meth:`_forward` only."""

    name: str = "abstract"

    def __init__(self, model: Model, config: EngineConfig) -> None:
        self.model = model
        self.config = config
        self.device: str = "cpu"
        self.precision: str = "fp32"
        self._input_device = torch.device("cpu")  # where uint8 tiles are normalised
        self._class_weight = model.tumour_weight().float()

    @abc.abstractmethod
    def _forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised (N, 3, H, W) float batch -> (logits (N, 2), feature_map (N, K, h, w))."""

    def infer(self, batch: torch.Tensor) -> Inference:
        """Logits, calibrated probabilities and exact Grad-CAMs for a batch of tiles."""
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise BackendError(f"{self.name}: batch must be (N, 3, H, W); got {tuple(batch.shape)}")
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                logits, feature_map = self._forward(self._normalised(batch))
                if logits.is_cuda:
                    torch.cuda.synchronize(logits.device)
                forward_seconds = time.perf_counter() - started
                inference = make_inference(
                    logits,
                    feature_map,
                    self._class_weight,
                    self.model.card.temperature,
                    backend=self.name,
                    device=self.device,
                    precision=self.precision,
                    forward_seconds=forward_seconds,
                )
                del logits, feature_map
        except torch.cuda.OutOfMemoryError as exc:
            raise BackendError(
                f"{self.name}: out of GPU memory on a batch of {batch.shape[0]} tiles; "
                "lower engine.batch_size"
            ) from exc
        release_freed_memory()  # the activations just freed: keep resident memory flat
        return inference

    def _normalised(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 RGB tiles -> normalised float32 on the input device; float unchanged."""
        if batch.dtype != torch.uint8:
            return batch
        if self._input_device.type == "cuda":
            if not batch.is_cuda and not batch.is_pinned():
                batch = batch.pin_memory()
            batch = batch.to(self._input_device, non_blocking=True)
        return normalise_tiles(batch, self.model.card.normalisation)

    def describe(self) -> str:
        return f"{self.name} on {self.device} ({self.precision})"


class TorchCPUBackend(Backend):
    """float32 on the CPU, the model's own module."""

    name = "torch-cpu"

    def __init__(self, model: Model, config: EngineConfig) -> None:
        super().__init__(model, config)
        self._module = model.torch_module()
        if model.device.type != "cpu":
            self._module = copy.deepcopy(self._module).cpu().eval()
        self.device = "cpu"
        self.precision = "fp32"

    def _forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._module.forward_features(batch.to("cpu", torch.float32))


class TorchCUDABackend(Backend):
    """CUDA, channels_last, fp16 autocast when ``engine.precision == "fp16"``."""

    name = "torch-cuda"

    def __init__(self, model: Model, config: EngineConfig) -> None:
        super().__init__(model, config)
        if not torch.cuda.is_available():
            raise BackendError("torch-cuda: no CUDA GPU is available to torch")
        self._device = torch.device("cuda")
        self._input_device = self._device
        module = copy.deepcopy(model.torch_module())
        self._module = module.to(self._device, memory_format=torch.channels_last).eval()
        self.device = torch.cuda.get_device_name(self._device)
        self.precision = config.precision

    def _forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = batch.to(self._device, torch.float32, non_blocking=True)
        batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.precision == "fp16"):
            logits, feature_map = self._module.forward_features(batch)
        return logits.float(), feature_map.float()


@dataclass(frozen=True)
class _Registered:
    factory: Callable[[Model, EngineConfig], Backend]
    unavailable: Callable[[], str | None]  # None when usable, else the reason


_REGISTRY: dict[str, _Registered] = {}
_plugins_loaded = False


def register_backend(
    name: str,
    factory: Callable[[Model, EngineConfig], Backend],
    unavailable: Callable[[], str | None] = lambda: None,
) -> None:
    """Make a backend selectable; ``unavailable()`` says why it cannot run here (or None)."""
    _REGISTRY[name] = _Registered(factory, unavailable)


def _cuda_missing() -> str | None:
    return None if torch.cuda.is_available() else "no CUDA GPU is available to torch"


register_backend("torch-cpu", TorchCPUBackend)
register_backend("torch-cuda", TorchCUDABackend, _cuda_missing)


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for module in PLUGIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                logger.info("backend plugin %s unavailable: %s", module, exc)
        except ImportError as exc:
            logger.info("backend plugin %s unavailable: %s", module, exc)


def available_backends() -> dict[str, str | None]:
    """Registered backend names -> None when usable here, else why not."""
    _load_plugins()
    return {name: entry.unavailable() for name, entry in _REGISTRY.items()}


def select_backend(model: Model, config: Config | EngineConfig | None = None) -> Backend:
    """Resolve ``engine.backend`` (``auto`` | a name) once and build it; logs the choice."""
    engine = _engine_config(config)
    _load_plugins()
    requested = engine.backend
    if requested == "auto":
        reasons = []
        for name in AUTO_ORDER:
            entry = _REGISTRY.get(name)
            reason = "not installed" if entry is None else entry.unavailable()
            if reason is None:
                break
            reasons.append(f"{name}: {reason}")
        else:  # pragma: no cover - torch-cpu is always available
            raise BackendError(f"no inference backend is available ({'; '.join(reasons)})")
    else:
        name = requested
        entry = _REGISTRY.get(name)
        reason = "not installed" if entry is None else entry.unavailable()
        if reason is not None:
            raise BackendError(f"engine.backend={name!r} cannot run here: {reason}")
    try:
        backend = _REGISTRY[name].factory(model, engine)
    except BackendError:
        raise
    except (RuntimeError, OSError) as exc:
        raise BackendError(f"{name}: could not start: {exc}") from exc
    logger.info("inference backend: %s (engine.backend=%s)", backend.describe(), requested)
    return backend


def _engine_config(config: Any) -> EngineConfig:
    if config is None:
        return EngineConfig()
    if isinstance(config, Config):
        return config.engine
    return config
