"""ONNX export checked against torch with onnxruntime (CPU), the peer implementation.

Tiny inputs (64 px) keep it fast; the tolerance is the issue's: max |diff| <= 1e-4 on
logits and on the feature map, at batch 1 and 3 (the batch axis is dynamic).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_tiny_model
from marginwatch.engine import load_model
from marginwatch.engine.errors import ModelError
from marginwatch.engine.onnx_export import INPUT_NAME, OUTPUT_NAMES, export_onnx

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=["resnet18", "mobilenet_v3_small"])
def exported(request, tmp_path_factory):  # noqa: ANN001, ANN201
    folder = tmp_path_factory.mktemp(f"onnx-{request.param}")
    model = load_model(make_tiny_model(folder / "model", request.param, seed=3))
    path = export_onnx(model, folder / "model.onnx")
    assert not model.torch_module().training  # the export leaves the model in eval mode
    return model, path


def test_graph_has_named_outputs_and_dynamic_batch(exported) -> None:  # noqa: ANN001
    model, path = exported
    graph = onnx.load(str(path)).graph
    onnx.checker.check_model(onnx.load(str(path)))
    assert [i.name for i in graph.input] == [INPUT_NAME]
    assert [o.name for o in graph.output] == list(OUTPUT_NAMES)
    size = model.card.input_size_px
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"  # (N, 3, H, W): only N is dynamic
    assert [d.dim_value for d in dims[1:]] == [3, size, size]
    for output in graph.output:
        assert output.type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_matches_torch(exported, batch: int) -> None:  # noqa: ANN001
    model, path = exported
    size = model.card.input_size_px
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, features = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x.numpy()})
    with torch.no_grad():
        want_logits, want_features = model.torch_module().forward_features(x)
    assert logits.shape == (batch, 2)
    assert features.shape == tuple(want_features.shape)
    assert np.abs(logits - want_logits.numpy()).max() <= TOLERANCE
    assert np.abs(features - want_features.numpy()).max() <= TOLERANCE
    # the CAM from the ONNX feature map is the torch backend's CAM
    got = model.infer(x)
    weight = model.tumour_weight().numpy()
    cams = np.maximum(np.einsum("nkhw,k->nhw", features, weight), 0)
    assert np.abs(cams - got.cams.numpy()).max() <= 1e-3


def test_export_into_a_folder_path_is_refused(tiny_model_dir, tmp_path) -> None:  # noqa: ANN001
    model = load_model(tiny_model_dir)
    with pytest.raises(ModelError, match="is a folder"):
        export_onnx(model, tmp_path)
