"""engine.model / inference / backends: Grad-CAM against pytorch-grad-cam, artefacts, backends."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import marginwatch.engine as engine
import numpy as np
import pytest
import torch
from marginwatch.engine import ARCHITECTURES, build_model, load_model, select_backend
from marginwatch.engine.backends import Backend, available_backends, register_backend
from marginwatch.engine.config import EngineConfig
from marginwatch.engine.errors import BackendError, ModelCardError, ModelError
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from safetensors.torch import load_file, save_file

CAM_INPUT_PX = 64  # 2x2 feature maps: enough to check the channel weighting, cheap on 2 cores


def test_public_names():
    assert engine.__all__ == sorted(engine._EXPORTS)
    for name in engine.__all__:
        assert getattr(engine, name) is not None
    assert {
        "build_model",
        "load_model",
        "assess",
        "prepare",
        "finish",
        "select_backend",
        "Model",
        "Inference",
        "Assessment",
        "PreparedImage",
        "ModelCard",
    } <= set(engine.__all__)


def test_light_modules_do_not_import_torch():
    code = (
        "import sys; import marginwatch.engine, marginwatch.engine.errors, "
        "marginwatch.engine.config, marginwatch.engine.render, marginwatch.engine.card; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _with_batchnorm_statistics(module: torch.nn.Module) -> torch.nn.Module:
    """Give a random network realistic BatchNorm statistics.

    Freshly initialised EfficientNet/MobileNet blocks (running mean 0, variance 1) collapse
    to nearly constant feature maps, whose CAM is rounding noise for both implementations.
    """
    for layer in module.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            layer.momentum = None  # cumulative average over the calibration batch
            layer.reset_running_stats()
    module.train()
    with torch.no_grad():
        module(torch.randn(4, 3, 64, 64))
    return module.eval()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_grad_cam_equals_pytorch_grad_cam(arch):
    model = build_model(arch, input_size_px=CAM_INPUT_PX)
    module = _with_batchnorm_statistics(model.torch_module())
    x = torch.randn(2, 3, CAM_INPUT_PX, CAM_INPUT_PX)
    ours = model.infer(x).cams
    if not bool((ours.amax(dim=(1, 2)) > 0).all()):  # random sign: make the tumour CAM non-zero
        with torch.no_grad():
            module.classifier.weight[1].neg_()
        ours = model.infer(x).cams
    assert bool((ours.amax(dim=(1, 2)) > 0).all()), "degenerate random CAM"
    assert ours.dtype == torch.float32 and ours.min() >= 0
    with GradCAM(model=module, target_layers=[model.target_layer()]) as cam:
        theirs = cam(input_tensor=x, targets=[ClassifierOutputTarget(1)] * len(x))
    # pytorch-grad-cam: min-max per image, resize to the input, ReLU, mean over layers, min-max
    size = (CAM_INPUT_PX, CAM_INPUT_PX)
    ours_scaled = scale_cam_image(np.maximum(scale_cam_image(ours.numpy(), size), 0))
    for a, b in zip(ours_scaled, theirs, strict=True):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.999
        assert np.abs(a - b).max() < 1e-3
    # logits agree with the plain forward too
    torch.testing.assert_close(model.infer(x).logits, module(x), rtol=1e-4, atol=1e-4)


def test_head_is_gap_dropout_linear_for_every_family():
    for arch in ("mobilenet_v3_large", "convnext_tiny"):
        module = build_model(arch, input_size_px=64).torch_module()
        assert isinstance(module.pool, torch.nn.AdaptiveAvgPool2d)
        assert isinstance(module.dropout, torch.nn.Dropout)
        assert isinstance(module.classifier, torch.nn.Linear)
        assert module.classifier.out_features == 2


def test_calibrated_probabilities_use_the_card_temperature():
    model = build_model("resnet18", input_size_px=64, temperature=2.0)
    result = model.infer(torch.randn(3, 3, 64, 64))
    expected = torch.softmax(result.logits / 2.0, dim=1)[:, 1]
    torch.testing.assert_close(result.probabilities, expected)
    torch.testing.assert_close(result.raw_probabilities, torch.softmax(result.logits, dim=1)[:, 1])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_artefact_round_trip(tmp_path, dtype):
    model = build_model(
        "mobilenet_v3_small",
        input_size_px=64,
        um_per_px=0.7,
        synthetic_demo=True,
        metrics={"auc": 0.5},
        training_data_sha256="ab" * 32,
    )
    folder = model.save(tmp_path / "m", dtype=dtype)
    assert sorted(p.name for p in folder.iterdir()) == ["model.json", "weights.safetensors"]
    manifest = "".join(
        f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}\n"
        for n in ("model.json", "weights.safetensors")
    )
    assert model.digest == hashlib.sha256(manifest.encode()).hexdigest()
    loaded = load_model(folder)
    assert loaded.digest == model.digest
    assert loaded.card == model.card and loaded.card.weights_dtype == dtype
    assert json.loads((folder / "model.json").read_text())["synthetic_demo"] is True
    assert all(p.dtype == torch.float32 for p in loaded.torch_module().parameters())
    x = torch.randn(2, 3, 64, 64)
    tol = 1e-5 if dtype == "float32" else 5e-2
    torch.testing.assert_close(loaded.infer(x).logits, model.infer(x).logits, rtol=tol, atol=tol)


def test_card_change_changes_digest(tmp_path):
    model = build_model("resnet18", input_size_px=64)
    model.save(tmp_path / "a")
    before = model.digest
    model.update_card(temperature=1.5, threshold=0.3)
    model.save(tmp_path / "b")
    assert model.digest != before and load_model(tmp_path / "b").card.temperature == 1.5
    with pytest.raises(ModelCardError):
        model.update_card(threshold=2.0)


def test_card_and_weights_disagreement(tmp_path, tiny_model_dir):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir, folder)
    card = json.loads((folder / "model.json").read_text())
    card["architecture"] = "resnet34"
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelCardError, match="do not match architecture 'resnet34'"):
        load_model(folder)
    card["architecture"] = "resnet18"
    card["weights_dtype"] = "float16"
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelCardError, match="weights_dtype='float16'"):
        load_model(folder)
    card["weights_dtype"] = "float32"
    (folder / "model.json").write_text(json.dumps(card))
    tensors = load_file(folder / "weights.safetensors")
    tensors["classifier.weight"] = torch.zeros(3, 512)
    save_file(tensors, folder / "weights.safetensors")
    with pytest.raises(ModelCardError, match=r"classifier.weight has shape \(3, 512\)"):
        load_model(folder)


def test_broken_model_folders(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no model.json"):
        load_model(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.json").write_text("{not json")
    with pytest.raises(ModelCardError, match="not valid JSON"):
        load_model(bad)
    (bad / "model.json").write_text(json.dumps({"architecture": "vgg16"}))
    with pytest.raises(ModelCardError, match="architecture"):
        load_model(bad)
    (bad / "model.json").write_text(json.dumps({"architecture": "resnet18", "input_size_px": 64}))
    with pytest.raises(ModelError, match="no weights.safetensors"):
        load_model(bad)
    (bad / "weights.safetensors").write_bytes(b"\x80\x04pickle? no")
    with pytest.raises(ModelError, match="not a readable safetensors"):
        load_model(bad)
    with pytest.raises(ModelError, match="unknown architecture"):
        build_model("vgg16")


def test_backend_selection_and_plugin_registry(tiny_model_dir):
    model = load_model(tiny_model_dir)
    backend = select_backend(model, EngineConfig(backend="torch-cpu"))
    assert (backend.name, backend.device, backend.precision) == ("torch-cpu", "cpu", "fp32")
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(backend.infer(x).cams, model.infer(x).cams)
    auto = select_backend(model, EngineConfig())
    assert auto.name == ("torch-cuda" if torch.cuda.is_available() else "torch-cpu")
    with pytest.raises(BackendError, match="tensorrt"):
        select_backend(model, EngineConfig(backend="tensorrt"))
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="no CUDA GPU"):
            select_backend(model, EngineConfig(backend="torch-cuda"))
    with pytest.raises(BackendError, match=r"\(N, 3, H, W\)"):
        backend.infer(torch.randn(3, 64, 64))

    class Doubling(Backend):
        name = "tensorrt"

        def _forward(self, batch):  # noqa: ANN001, ANN202
            return self.model.torch_module().forward_features(batch)

    from marginwatch.engine import backends

    available_backends()  # load the real plugins first, so the registry is restored with them
    before = dict(backends._REGISTRY)
    register_backend("tensorrt", Doubling)
    try:
        assert available_backends()["tensorrt"] is None
        assert select_backend(model, EngineConfig()).name == "tensorrt"
    finally:
        # put back what was registered (the real TensorRT plugin), not just remove ours
        backends._REGISTRY.clear()
        backends._REGISTRY.update(before)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_cuda_backend_matches_cpu(tiny_model_dir):
    model = load_model(tiny_model_dir)
    cuda = select_backend(model, EngineConfig(backend="torch-cuda", precision="fp16"))
    x = torch.randn(4, 3, 64, 64)
    got, want = cuda.infer(x), model.infer(x)
    assert cuda.precision == "fp16" and got.cams.device.type == "cpu"
    torch.testing.assert_close(got.probabilities, want.probabilities, rtol=0.02, atol=0.02)
