"""The TensorRT backend: engines built from the ONNX export, cached per GPU, on torch CUDA memory.

This is the only module that imports ``tensorrt``, and only inside functions: importing
this module never needs TensorRT, so :mod:`~marginwatch.engine.backends` can always load
it and register ``tensorrt`` with a reason when it cannot run here.

Written against the TensorRT 10 Python API:

- build (:func:`build_plan`): ``trt.Builder`` -> ``create_network(0)`` (explicit batch is
  the only mode in 10) -> ``OnnxParser.parse`` -> builder config with a workspace
  ``set_memory_pool_limit``, ``BuilderFlag.FP16`` for fp16, one optimisation profile
  ``(1, 3, S, S) .. (max_batch, 3, S, S)`` and a timing cache loaded from and saved to the
  engine cache -> ``build_serialized_network``. TensorRT's messages go to a capturing
  ``ILogger``; a failed parse or build raises :class:`EngineBuildError` with them attached.
- run (:class:`TensorRTBackend`): ``Runtime.deserialize_cuda_engine`` -> one execution
  context; per batch ``set_input_shape``, ``set_tensor_address`` with torch CUDA tensors'
  ``data_ptr()`` and ``execute_async_v3`` on torch's current CUDA stream (no pycuda).
  Outputs are logits (N, 2) and the feature map (N, K, h, w); probabilities and Grad-CAM
  come from :class:`~marginwatch.engine.backends.Backend`, exactly as for torch.

:func:`prepare_engine` is what the daemon's backend selection calls (through the
``tensorrt`` factory): it loads the cached plan matching (model digest, TensorRT
version, GPU name and compute capability, precision, max batch, input size) or builds
one and logs how long that took (engine/_engine_cache.py).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from ._engine_cache import (
    BuildFunction,
    BuildOutput,
    EngineCache,
    EngineKey,
    MessageLog,
    PreparedPlan,
    default_cache_dir,
    ensure_plan,
)
from .backends import Backend, register_backend
from .config import EngineConfig
from .errors import BackendError, EngineBuildError
from .model import Model
from .onnx_export import INPUT_NAME, OUTPUT_NAMES, onnx_bytes

__all__ = [
    "TensorRTBackend",
    "build_plan",
    "engine_key",
    "prepare_engine",
    "tensorrt_unavailable",
]

logger = logging.getLogger(__name__)

MIN_TENSORRT_MAJOR = 10
INSTALL_HINT = (
    "install the extra: pip install 'marginwatch[tensorrt]' (TensorRT >= 10, NVIDIA wheels)"
)


def _import_tensorrt() -> ModuleType:
    """``import tensorrt``: the one place it happens."""
    import tensorrt

    return tensorrt


def tensorrt_unavailable() -> str | None:
    """None when TensorRT >= 10 imports and torch sees a CUDA GPU; else the reason."""
    try:
        trt = _import_tensorrt()
    except ImportError as exc:
        return f"TensorRT is not installed ({exc}); {INSTALL_HINT}"
    except OSError as exc:  # the wheel is there but libnvinfer cannot load
        return f"TensorRT is installed but cannot load its libraries ({exc})"
    version = str(getattr(trt, "__version__", "0"))
    major = version.split(".")[0]
    if not major.isdigit() or int(major) < MIN_TENSORRT_MAJOR:
        return (f"TensorRT {version} is installed; marginwatch needs TensorRT "
                f">= {MIN_TENSORRT_MAJOR}")
    if not torch.cuda.is_available():
        return "no CUDA GPU is available to torch"
    return None


def gpu_identity(device: torch.device | None = None) -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") of the current CUDA device."""
    index = torch.cuda.current_device() if device is None or device.index is None else device.index
    major, minor = torch.cuda.get_device_capability(index)
    return torch.cuda.get_device_name(index), f"{major}.{minor}"


def engine_key(model: Model, *, precision: str, max_batch: int, tensorrt_version: str,
               gpu_name: str, compute_capability: str) -> EngineKey:
    """The cache key of ``model``'s engine for these build settings on this GPU."""
    if precision not in ("fp16", "fp32"):
        raise BackendError(f"TensorRT precision {precision!r}; expected 'fp16' or 'fp32'")
    if max_batch < 1:
        raise BackendError(f"TensorRT max batch {max_batch}; expected at least 1")
    return EngineKey(
        model_digest=model.digest,
        tensorrt_version=tensorrt_version,
        gpu_name=gpu_name,
        compute_capability=compute_capability,
        precision=precision,
        max_batch=int(max_batch),
        input_size_px=model.card.input_size_px,
    )


# --- TensorRT calls ----------------------------------------------------------------


def _capturing_logger(trt: ModuleType, log: MessageLog) -> Any:
    """An ``ILogger`` that keeps TensorRT's messages (VERBOSE dropped) and forwards them."""
    severity = trt.ILogger.Severity
    levels = {
        severity.INTERNAL_ERROR: logging.ERROR,
        severity.ERROR: logging.ERROR,
        severity.WARNING: logging.WARNING,
        severity.INFO: logging.DEBUG,
    }

    class CapturingLogger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, level: Any, msg: str) -> None:
            if level not in levels:
                return
            log.add(getattr(level, "name", str(level)), msg)
            logger.log(levels[level], "TensorRT: %s", msg)

    return CapturingLogger()


def build_plan(trt: ModuleType, onnx: bytes, *, input_size_px: int, max_batch: int,
               precision: str, timing_cache: bytes | None, workspace_bytes: int,
               log: MessageLog) -> BuildOutput:
    """Parse ``onnx`` and build a serialised plan (see the module docstring)."""
    trt_logger = _capturing_logger(trt, log)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse(onnx):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse the ONNX model: {errors}", log=log.text())
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    size = int(input_size_px)
    profile.set_shape(INPUT_NAME, (1, 3, size, size), (max_batch, 3, size, size),
                      (max_batch, 3, size, size))  # min, opt, max (N, 3, H, W)
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache or b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT could not build the engine ({precision}, batch 1..{max_batch}, "
            f"{size}x{size} px)", log=log.text())
    return BuildOutput(plan=bytes(serialized),
                       timing_cache=bytes(config.get_timing_cache().serialize()))


def _torch_dtype(trt: ModuleType, dtype: Any) -> torch.dtype:
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
    if dtype not in table:
        raise BackendError(f"tensorrt: engine tensor type {dtype} is not handled; expected float")
    return table[dtype]


# --- the daemon's entry point --------------------------------------------------------


def prepare_engine(
    model: Model,
    config: EngineConfig | None = None,
    *,
    precision: str | None = None,
    max_batch: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    rebuild: bool = False,
    environ: Mapping[str, str] | None = None,
    build: BuildFunction | None = None,
    target: tuple[str, str, str] | None = None,
) -> PreparedPlan:
    """Load the matching cached plan for ``model`` on this GPU, or build and cache it.

    Settings default to ``config`` (``precision``, ``tensorrt_max_batch``,
    ``engine_cache_dir``, else :func:`default_cache_dir`). ``build`` and ``target``
    ((TensorRT version, GPU name, compute capability)) replace TensorRT and the GPU;
    tests use them to drive the cache without either.
    """
    engine = config or EngineConfig()
    precision = precision or engine.precision
    max_batch = max_batch or engine.tensorrt_max_batch
    directory = Path(cache_dir or engine.engine_cache_dir or default_cache_dir(environ))
    if (build is None) != (target is None):
        raise ValueError("prepare_engine: pass both build and target, or neither")
    if build is None or target is None:
        reason = tensorrt_unavailable()
        if reason is not None:
            raise BackendError(f"cannot build a TensorRT engine here: {reason}")
        trt = _import_tensorrt()
        target = (str(trt.__version__), *gpu_identity())
        build = _tensorrt_build(trt, model, precision, max_batch,
                                engine.tensorrt_workspace_mib * 2**20)
    key = engine_key(model, precision=precision, max_batch=max_batch, tensorrt_version=target[0],
                     gpu_name=target[1], compute_capability=target[2])
    return ensure_plan(key, EngineCache(directory), build, rebuild=rebuild)


def _tensorrt_build(trt: ModuleType, model: Model, precision: str, max_batch: int,
                    workspace_bytes: int) -> BuildFunction:
    def build(timing_cache: bytes | None) -> BuildOutput:
        log = MessageLog()
        onnx = onnx_bytes(model)
        try:
            return build_plan(trt, onnx, input_size_px=model.card.input_size_px,
                              max_batch=max_batch, precision=precision,
                              timing_cache=timing_cache, workspace_bytes=workspace_bytes, log=log)
        except EngineBuildError:
            raise
        except (RuntimeError, TypeError, ValueError, AttributeError) as exc:
            raise EngineBuildError(f"TensorRT engine build failed: {exc}", log=log.text()) from exc

    return build


class TensorRTBackend(Backend):
    """A TensorRT engine on the current CUDA device; precision from ``engine.precision``."""

    name = "tensorrt"

    def __init__(self, model: Model, config: EngineConfig,
                 prepared: PreparedPlan | None = None) -> None:
        super().__init__(model, config)
        reason = tensorrt_unavailable()
        if reason is not None:
            raise BackendError(f"tensorrt: {reason}")
        trt = _import_tensorrt()
        self._device = torch.device("cuda", torch.cuda.current_device())
        self._input_device = self._device  # uint8 tiles are normalised on the GPU (base class)
        self._log = MessageLog()
        self._trt_logger = _capturing_logger(trt, self._log)  # must outlive runtime and engine
        self._runtime = trt.Runtime(self._trt_logger)
        prepared = prepared or prepare_engine(model, config)
        engine = self._runtime.deserialize_cuda_engine(prepared.plan)
        if engine is None and not prepared.built:
            logger.warning("cached TensorRT engine %s does not deserialise; rebuilding",
                           prepared.key.stem)
            prepared = prepare_engine(model, config, rebuild=True)
            engine = self._runtime.deserialize_cuda_engine(prepared.plan)
        if engine is None:
            raise EngineBuildError(f"TensorRT could not deserialise engine {prepared.key.stem}",
                                   log=self._log.text())
        names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        if names != {INPUT_NAME, *OUTPUT_NAMES}:
            raise BackendError(f"tensorrt: engine tensors {sorted(names)}; expected "
                               f"{sorted({INPUT_NAME, *OUTPUT_NAMES})}")
        self._dtypes = {name: _torch_dtype(trt, engine.get_tensor_dtype(name)) for name in names}
        context = engine.create_execution_context()
        if context is None:
            raise BackendError(f"tensorrt: cannot create an execution context: {self._log.text()}")
        self._engine, self._context = engine, context
        self._lock = threading.Lock()  # one execution context: one batch at a time
        self.prepared = prepared
        self.max_batch = prepared.key.max_batch
        self.device = prepared.key.gpu_name
        self.precision = prepared.key.precision

    def _forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.prepared.key.input_size_px
        if tuple(batch.shape[2:]) != (size, size):
            raise BackendError(f"tensorrt: tiles are {tuple(batch.shape[2:])} px; the engine "
                               f"was built for ({size}, {size})")
        x = batch.to(self._device, self._dtypes[INPUT_NAME], non_blocking=True).contiguous()
        parts = [self._run(chunk.contiguous()) for chunk in x.split(self.max_batch)]
        logits = torch.cat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        features = torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        return logits, features

    def _run(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One chunk (n <= max_batch, 3, S, S) on the current stream -> (logits, features)."""
        with self._lock:
            context = self._context
            if not context.set_input_shape(INPUT_NAME, tuple(x.shape)):
                raise BackendError(f"tensorrt: input shape {tuple(x.shape)} rejected by the engine")
            outputs = {
                name: torch.empty(tuple(context.get_tensor_shape(name)), dtype=self._dtypes[name],
                                  device=self._device)
                for name in OUTPUT_NAMES
            }
            context.set_tensor_address(INPUT_NAME, x.data_ptr())
            for name, tensor in outputs.items():
                context.set_tensor_address(name, tensor.data_ptr())
            stream = torch.cuda.current_stream(self._device)
            if not context.execute_async_v3(stream.cuda_stream):
                raise BackendError(f"tensorrt: execution failed: {self._log.text()[-2000:]}")
        return outputs["logits"].float(), outputs["features"].float()

    def describe(self) -> str:
        origin = (f"built in {self.prepared.build_seconds:.1f} s" if self.prepared.built
                  else "cached engine")
        return (f"{self.name} on {self.device} ({self.precision}, max batch {self.max_batch}, "
                f"{origin})")


register_backend("tensorrt", TensorRTBackend, tensorrt_unavailable)
