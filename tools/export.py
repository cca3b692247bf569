"""``marginwatch export MODEL --onnx OUT | --tensorrt``: derived artefacts of a model.

``--onnx OUT`` writes the two-output, dynamic-batch ONNX file (engine/onnx_export.py).
``--tensorrt`` builds (or finds) the TensorRT engine ahead of time in the same cache the
daemon reads, with the same defaults (``engine.precision``, ``engine.tensorrt_max_batch``,
``engine.engine_cache_dir`` from ``--config``), so the daemon's first start loads it
instead of building. Both may be given in one call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from marginwatch.engine.config import load_config
from marginwatch.engine.errors import BackendError, ConfigError

__all__ = ["run_export"]

logger = logging.getLogger(__name__)


def run_export(
    model_dir: Path,
    *,
    onnx_out: Path | None = None,
    tensorrt: bool = False,
    precision: str | None = None,
    max_batch: int | None = None,
    cache_dir: Path | None = None,
    rebuild: bool = False,
    config_path: Path | None = None,
    echo: Callable[[str], None] = print,
) -> int:
    """Export as asked; returns the exit code (0). Errors are MarginwatchError subclasses."""
    if onnx_out is None and not tensorrt:
        raise ConfigError("nothing to export: pass --onnx OUT and/or --tensorrt")
    if precision is not None and precision not in ("fp16", "fp32"):
        raise ConfigError(f"--precision {precision!r}; expected fp16 or fp32")
    if max_batch is not None and not 1 <= max_batch <= 1024:
        raise ConfigError(f"--max-batch {max_batch}; expected 1..1024")
    config = load_config(config_path)
    if tensorrt:
        # Fail before loading torch and the model when TensorRT cannot run here.
        from marginwatch.engine.tensorrt_backend import tensorrt_unavailable

        reason = tensorrt_unavailable()
        if reason is not None:
            raise BackendError(f"--tensorrt: cannot build a TensorRT engine here: {reason}")

    from marginwatch.engine import load_model

    model = load_model(model_dir)
    if onnx_out is not None:
        from marginwatch.engine.onnx_export import export_onnx

        path = export_onnx(model, onnx_out)
        echo(f"ONNX: {path} (model {model.digest[:12]}, {model.card.architecture}, "
             f"input (N, 3, {model.card.input_size_px}, {model.card.input_size_px}), "
             "outputs logits, features)")
    if tensorrt:
        from marginwatch.engine.tensorrt_backend import prepare_engine

        prepared = prepare_engine(model, config.engine, precision=precision, max_batch=max_batch,
                                  cache_dir=cache_dir, rebuild=rebuild)
        if prepared.path is None:
            raise BackendError(
                "the TensorRT engine was built but could not be written to the engine cache "
                f"({cache_dir or config.engine.engine_cache_dir or 'default cache folder'})")
        how = f"built in {prepared.build_seconds:.1f} s" if prepared.built else "already cached"
        key = prepared.key
        echo(f"TensorRT: {prepared.path} ({how}; {key.precision}, batch 1..{key.max_batch}, "
             f"{key.gpu_name} sm{key.compute_capability}, TensorRT {key.tensorrt_version})")
    return 0
