"""TensorRT backend: selection and availability here, parity where TensorRT and a GPU exist.

On a machine without TensorRT (this project's test machine) only the selection rules
run: ``auto`` falls back to torch, an explicit ``tensorrt`` is a clear BackendError.
``test_tensorrt_parity_with_torch_fp32`` is the one test that runs TensorRT itself; it
is marked ``tensorrt`` and skipped, with the reason, where TensorRT or a GPU is missing.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_tiny_model
from marginwatch.engine import available_backends, load_model, select_backend
from marginwatch.engine.config import EngineConfig
from marginwatch.engine.errors import BackendError
from marginwatch.engine.tensorrt_backend import TensorRTBackend, tensorrt_unavailable

REASON = tensorrt_unavailable()
needs_no_tensorrt = pytest.mark.skipif(REASON is None, reason="TensorRT and a GPU are present")


def test_tensorrt_is_registered_with_a_reason_when_unusable() -> None:
    backends = available_backends()
    assert "tensorrt" in backends
    assert backends["tensorrt"] == REASON


@needs_no_tensorrt
def test_auto_without_tensorrt_picks_torch(tiny_model_dir) -> None:  # noqa: ANN001
    backend = select_backend(load_model(tiny_model_dir), EngineConfig(backend="auto"))
    expected = "torch-cuda" if torch.cuda.is_available() else "torch-cpu"
    assert backend.name == expected


@needs_no_tensorrt
def test_explicit_tensorrt_without_it_is_a_clear_backend_error(tiny_model_dir) -> None:  # noqa: ANN001
    model = load_model(tiny_model_dir)
    with pytest.raises(BackendError) as info:
        select_backend(model, EngineConfig(backend="tensorrt"))
    message = str(info.value)
    assert "engine.backend='tensorrt' cannot run here" in message
    assert REASON is not None and REASON in message
    assert "\n" not in message
    with pytest.raises(BackendError, match="^tensorrt: "):
        TensorRTBackend(model, EngineConfig())


@needs_no_tensorrt
def test_reason_names_the_missing_part() -> None:
    assert REASON is not None
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert "TensorRT is not installed" in REASON and "marginwatch[tensorrt]" in REASON
    else:
        assert "CUDA" in REASON or "TensorRT" in REASON


@pytest.mark.tensorrt
@pytest.mark.skipif(REASON is not None, reason=f"needs TensorRT and a CUDA GPU: {REASON}")
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_tensorrt_parity_with_torch_fp32(tmp_path, precision: str) -> None:  # noqa: ANN001
    """Runs TensorRT: probabilities within 1e-2 of torch fp32, CAM correlation >= 0.99."""
    # 224 px gives a 7x7 feature map, so the CAM correlation is over 49 positions
    model = load_model(make_tiny_model(tmp_path / "model", "resnet18", input_size_px=224))
    config = EngineConfig(backend="tensorrt", precision=precision, tensorrt_max_batch=4,
                          engine_cache_dir=tmp_path / "engines")
    backend = select_backend(model, config)
    assert backend.name == "tensorrt" and backend.precision == precision
    assert backend.prepared.built and backend.prepared.path is not None
    size = model.card.input_size_px
    batch = torch.randn(6, 3, size, size, generator=torch.Generator().manual_seed(0))  # > max batch
    got = backend.infer(batch)
    want = model.infer(batch)
    assert got.backend == "tensorrt" and got.precision == precision
    assert got.cams.shape == want.cams.shape
    assert (got.probabilities - want.probabilities).abs().max().item() <= 1e-2
    for g, w in zip(got.cams.numpy(), want.cams.numpy(), strict=True):
        if w.std() > 0:
            assert np.corrcoef(g.ravel(), w.ravel())[0, 1] >= 0.99
    # a second backend loads the cached plan instead of building
    again = select_backend(model, config)
    assert not again.prepared.built and again.prepared.path == backend.prepared.path
