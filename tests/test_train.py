"""Training: the recipe's pieces, the artefact it writes, resuming, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from marginwatch.engine.errors import ConfigError, ManifestError, ModelError
from marginwatch.engine.model import build_model, load_model
from marginwatch.tools._augment import Augmentation
from marginwatch.tools._manifest import load_manifest
from marginwatch.tools._objective import AdaptiveClassWeights, FocalLoss, fit_temperature
from marginwatch.tools._options import preset_options
from marginwatch.tools._pretrained import load_pretrained
from marginwatch.tools.synth import write_dataset
from marginwatch.tools.train import TrainOptions, train
from safetensors.torch import load_file, save_file

# 256 px synthetic scans at 1 um/px; a 64 px model at 4 um/px sees each as one tile.
TINY = dict(input_size_px=64, um_per_px=4.0, batch_size=4, val_fraction=0.25, test_fraction=0.25)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    write_dataset(out, images=24, patients=8, tumour_fraction=0.4, size_px=256, seed=1, workers=1)
    return out / "manifest.csv"


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "weights.safetensors"))


def test_train_writes_a_loadable_calibrated_artefact(tiny_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "model"
    result = train(tiny_data, out, TrainOptions(epochs=2, synthetic_demo=True, **TINY))
    model = load_model(out)
    card = model.card
    assert card.input_size_px == 64 and card.um_per_px == 4.0
    assert card.synthetic_demo is True
    assert 0 < card.threshold < 1 and card.temperature > 0
    assert card.training_data_sha256 == load_manifest(tiny_data).sha256
    assert set(card.metrics) >= {"val_auc", "val_brier", "val_sensitivity"}
    record = json.loads((out / "training.json").read_text())
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    # the input-drift reference for monitoring, from the held-out validation images
    assert card.metrics["target_sensitivity"] == pytest.approx(0.9)
    assert card.input_reference["n_images"] == record["split_images"]["val"]
    assert len(card.input_reference["mu"]) == model.torch_module().classifier.in_features
    assert record["stopped"] == "reached 2 epochs" and result.epochs_run == 2
    patients = {n: set(p) for n, p in record["split_patients"].items()}
    assert not (
        patients["train"] & patients["val"]
        or patients["train"] & patients["test"]
        or patients["val"] & patients["test"]
    )
    for name in ("train", "val", "test"):  # split manifests load and resolve to real files
        assert len(load_manifest(out / "splits" / f"{name}.csv")) == record["split_images"][name]
    assert (out / "checkpoint" / "state.json").exists()
    assert all(h["val_brier"] is not None for h in record["history"])
    assert record["temperature_search_range"] == [0.01, 100.0]
    assert record["temperature_at_bound"] is (not 0.0101 < record["temperature"] < 99.0)
    assert (out / "learning-curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("training.json", "model.json"):  # no machine paths in the artefact
        assert str(tmp_path) not in (out / name).read_text()
        assert str(tiny_data.parent) not in (out / name).read_text()


def test_quality_thresholds_are_rederived_from_the_training_images(
    tiny_data: Path, tmp_path: Path
) -> None:
    """``marginwatch quality-thresholds MODEL MANIFEST``: the same margins give exactly the
    thresholds training wrote; the weights stay, the card and digest are rewritten, and a
    manifest the model was not trained on is refused in one line."""
    out = tmp_path / "model"
    train(tiny_data, out, TrainOptions(epochs=1, **TINY))
    before = load_model(out)
    weights = (out / "weights.safetensors").read_bytes()
    done = _cli("quality-thresholds", str(out), str(tiny_data))
    assert done.returncode == 0, done.stderr
    assert "signal_range_min" in done.stdout and "model card rewritten" in done.stdout
    after = load_model(out)
    assert after.card.quality == before.card.quality  # deterministic: same images, margins
    assert "signal_range x 0.45" in after.card.quality.derived_from
    assert (out / "weights.safetensors").read_bytes() == weights
    record = json.loads((out / "training.json").read_text())
    assert record["model_digest"] == after.digest
    assert record["quality_rederived"]["images"] > 0
    other = tiny_data.parent / "rederive-other.csv"  # beside it: the same relative paths
    other.write_text(tiny_data.read_text().replace("\n", "\r\n"))  # other bytes, same rows
    refused = _cli("quality-thresholds", str(out), str(other))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "not the manifest this model was trained on" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_presets_set_the_demo_recipe_and_explicit_options_win() -> None:
    demo = preset_options("demo", epochs=3, lr=None)
    assert (demo.input_size_px, demo.um_per_px, demo.tile_selection) == (64, 4.0, "top")
    assert demo.epochs == 3 and demo.lr == 1e-3 and demo.synthetic_demo is True
    assert (demo.target_sensitivity, demo.target_specificity) == (0.90, 0.80)
    assert preset_options("paper") == TrainOptions()
    assert TrainOptions().target_specificity is None  # the paper's rule: sensitivity alone
    with pytest.raises(ConfigError, match="target_specificity=1.5"):
        TrainOptions(target_specificity=1.5)
    with pytest.raises(ConfigError, match="--preset 'fast'"):
        preset_options("fast")
    with pytest.raises(ConfigError, match="tile_selection='best'"):
        TrainOptions(tile_selection="best")


def test_top_tile_selection_trains_on_each_image_s_most_tumour_like_tile(
    tiny_data: Path, tmp_path: Path
) -> None:
    """Scans of two model fields (a 32 px model at 4 um/px on 256 px scans: 4 tiles each)
    train on the top tile from the second epoch; the run is reproducible."""
    opts = {**TINY, "input_size_px": 32, "epochs": 2, "tile_selection": "top"}
    a = train(tiny_data, tmp_path / "a", TrainOptions(**opts))
    b = train(tiny_data, tmp_path / "b", TrainOptions(**opts))
    assert a.epochs_run == 2 and a.best_val_auc == b.best_val_auc
    record = json.loads((tmp_path / "a" / "training.json").read_text())
    assert record["tiles"]["train"] > record["train_images_used"]  # several tiles per image


def test_resume_continues_exactly_where_it_stopped(tiny_data: Path, tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    train(tiny_data, straight, TrainOptions(epochs=2, **TINY))
    paused = tmp_path / "paused"
    first = train(tiny_data, paused, TrainOptions(epochs=2, max_minutes=0, **TINY))
    assert first.epochs_run == 1 and first.stopped.startswith("time budget")
    second = train(tiny_data, paused, TrainOptions(epochs=2, **TINY), resume=True)
    assert second.epochs_run == 2
    a, b = _weights(straight), _weights(paused)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_out_folder_and_resume_are_checked(tiny_data: Path, tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(ModelError, match="not empty; pass --resume"):
        train(tiny_data, tmp_path / "busy", TrainOptions(epochs=1, **TINY))
    with pytest.raises(ModelError, match="no checkpoint to resume"):
        train(tiny_data, tmp_path / "fresh", TrainOptions(epochs=1, **TINY), resume=True)
    with pytest.raises(ConfigError, match="epochs=0"):
        TrainOptions(epochs=0)


def test_focal_loss_reduces_to_cross_entropy_and_down_weights_easy_samples() -> None:
    logits = torch.randn(16, 2)
    labels = torch.randint(0, 2, (16,))
    ce = FocalLoss(gamma=0.0, smoothing=0.0)(logits, labels, torch.ones(2))
    torch.testing.assert_close(ce, F.cross_entropy(logits, labels))
    smoothed = FocalLoss(gamma=0.0, smoothing=0.1)(logits, labels, torch.ones(2))
    torch.testing.assert_close(smoothed, F.cross_entropy(logits, labels, label_smoothing=0.1))
    easy = torch.tensor([[4.0, -4.0]])
    hard = torch.tensor([[0.2, -0.2]])
    focal = FocalLoss(gamma=2.0, smoothing=0.0)
    zero = torch.tensor([0])
    ratio_focal = focal(easy, zero, torch.ones(2)) / focal(hard, zero, torch.ones(2))
    ratio_ce = F.cross_entropy(easy, zero) / F.cross_entropy(hard, zero)
    assert ratio_focal < ratio_ce / 10


def test_adaptive_class_weights_follow_the_harder_class() -> None:
    weights = AdaptiveClassWeights((90, 10))
    assert weights.weights[1] > weights.weights[0]  # the rare class starts heavier
    assert weights.weights.mean() == pytest.approx(1.0)
    for _ in range(5):
        weights.observe(torch.tensor([1.0, 1.0, 0.1, 0.1]), torch.tensor([0, 0, 1, 1]))
        weights.end_epoch()
    assert weights.weights[0] > weights.weights[1]  # class 0 is now the one getting it wrong


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_fit_temperature_recovers_the_generating_temperature(true_t: float) -> None:
    g = torch.Generator().manual_seed(0)
    margin = torch.randn(4000, generator=g) * 3.0
    labels = (torch.rand(4000, generator=g) < torch.sigmoid(margin / true_t)).long()
    logits = torch.stack([torch.zeros_like(margin), margin], dim=1)
    assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.1)
    assert fit_temperature(logits, torch.zeros(4000, dtype=torch.long)) == 1.0


def test_augmentation_is_seeded_bounded_and_switchable() -> None:
    batch = torch.rand(3, 3, 32, 32)
    a = Augmentation()(batch, torch.Generator().manual_seed(5))
    b = Augmentation()(batch, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)
    assert a.shape == batch.shape and a.min() >= 0 and a.max() <= 1
    assert not torch.allclose(a, batch)
    torch.testing.assert_close(Augmentation.none()(batch, torch.Generator()), batch)
    with pytest.raises(ValueError, match="square"):
        Augmentation()(torch.rand(1, 3, 16, 32), torch.Generator())


def test_pretrained_from_an_artefact_and_from_torchvision(tmp_path: Path) -> None:
    source = build_model("mobilenet_v3_small", input_size_px=64)
    source.save(tmp_path / "src")
    target = build_model("mobilenet_v3_small", input_size_px=64)
    count = load_pretrained(target.torch_module(), tmp_path / "src" / "weights.safetensors")
    assert count == len(source.torch_module().state_dict())
    for key, value in source.torch_module().state_dict().items():
        torch.testing.assert_close(target.torch_module().state_dict()[key], value)

    import torchvision

    stock = torchvision.models.mobilenet_v3_small(weights=None)
    save_file(stock.state_dict(), str(tmp_path / "tv.safetensors"))
    fresh = build_model("mobilenet_v3_small", input_size_px=64)
    loaded = load_pretrained(fresh.torch_module(), tmp_path / "tv.safetensors")
    assert loaded == len(stock.state_dict()) - 2  # all but the 1000-class linear layer
    torch.testing.assert_close(
        fresh.torch_module().state_dict()["features.0.0.0.weight"],
        stock.state_dict()["features.0.0.weight"],
    )

    save_file({"nothing.like.this": torch.zeros(3)}, str(tmp_path / "junk.safetensors"))
    with pytest.raises(ModelError, match="none of its 1 tensors"):
        load_pretrained(fresh.torch_module(), tmp_path / "junk.safetensors")
    (tmp_path / "pickle.pt").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(ModelError, match="not a readable safetensors"):
        load_pretrained(fresh.torch_module(), tmp_path / "pickle.pt")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).parent / "marginwatch"
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=120)


def _manifest(tmp_path: Path, rows: list[str]) -> Path:
    path = tmp_path / "manifest.csv"
    path.write_text("path,label,patient_id,centre\n" + "\n".join(rows) + "\n")
    return path


BAD_MANIFESTS = [
    (["missing.tif,tumour,P1,dev"], "1 missing file (line 2: missing.tif)"),
    (["{0},maybe,P1,dev"], "1 unknown label (line 2: 'maybe')"),
    (
        ["{0},benign,P0,dev", "{1},benign,P1,dev", "{2},benign,P2,dev"],
        "every image is labelled benign",
    ),
    (["{0},tumour,P1,dev", "{1},benign,P1,ext"], "patient in two centres (P1: dev, ext)"),
    (["{0},tumour,P1,dev", "{1},benign,P2,dev"], "too few patients"),
    (["{0},tumour,P1,dev", "{1},benign,P1,dev", "{2},benign,P1,dev"], "1 patients"),
]


def _bad_manifest(tmp_path: Path, rows: list[str]) -> Path:
    names = [f"{i}.tif" for i in range(3)]
    for name in names:
        (tmp_path / name).write_bytes(b"II*\x00")
    return _manifest(tmp_path, [r.format(*names) for r in rows])


@pytest.mark.parametrize(("rows", "expected"), BAD_MANIFESTS)
def test_bad_manifests_are_refused_before_training(
    tmp_path: Path, rows: list[str], expected: str
) -> None:
    with pytest.raises(ManifestError) as err:
        train(_bad_manifest(tmp_path, rows), tmp_path / "out", TrainOptions(**TINY))
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_bad_manifest_in_one_line(tmp_path: Path) -> None:
    rows, expected = BAD_MANIFESTS[3]
    proc = _cli("train", str(_bad_manifest(tmp_path, rows)), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_cli_refuses_images_of_another_device_profile_before_training(
    tiny_data: Path, tmp_path: Path
) -> None:
    """Grey scans, an rgb model: one line naming the channels, exit 2, no epoch run."""
    out = tmp_path / "out"
    proc = _cli(
        "train",
        str(tiny_data),
        "--out",
        str(out),
        "--profile",
        "rgb",
        "--input-size",
        "64",
        "--um-per-px",
        "4",
        "--val-fraction",
        "0.25",
        "--test-fraction",
        "0.25",
    )
    assert proc.returncode == 2, proc.stderr
    # progress lines (manifest, split) come first; the refusal is the one last line
    error = proc.stderr.strip().splitlines()[-1]
    assert "cannot be used" in error and "device profile 'rgb'" in error, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (out / "checkpoint").exists()


def test_cli_refuses_unreadable_images_before_training(tmp_path: Path) -> None:
    rows = []
    rng = np.random.default_rng(0)
    for i in range(15):
        (tmp_path / f"{i}.tif").write_bytes(rng.bytes(64))  # not images
        rows.append(f"{i}.tif,{'tumour' if i % 3 == 0 else 'benign'},P{i},dev")
    proc = _cli(
        "train",
        str(_manifest(tmp_path, rows)),
        "--out",
        str(tmp_path / "out"),
        "--input-size",
        "64",
    )
    assert proc.returncode == 2, proc.stderr
    assert "cannot be used" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "checkpoint").exists()


def test_batchnorm_is_recalibrated_on_the_tiles_training_draws() -> None:
    """With top-tile selection the running statistics come from each image's top tile
    (what the weights were fitted on), not from all tiles, most of them plain stroma;
    with random selection, from all tiles."""
    from marginwatch.engine.config import EngineConfig
    from marginwatch.tools._dataset import TileCache
    from marginwatch.tools._trainer import Trainer

    images, per_image, side = 6, 4, 32
    tiles = torch.zeros(images * per_image, 3, side, side, dtype=torch.uint8)
    top = np.arange(images) * per_image + 2  # one bright tile per image, the rest black
    tiles[top] = 255
    cache = TileCache(
        tiles=tiles,
        image_of=np.repeat(np.arange(images), per_image),
        labels=np.array([0, 1] * (images // 2)),
        offsets=np.arange(images + 1) * per_image,
    )
    model = build_model("vgg_small", input_size_px=side, um_per_px=4.0)
    options = TrainOptions(architecture="vgg_small", input_size_px=side, batch_size=4,
                           tile_selection="top")
    trainer = Trainer(options, model, cache, cache, EngineConfig(), torch.device("cpu"))
    first_norm = next(
        m for m in trainer.network.modules() if isinstance(m, torch.nn.BatchNorm2d)
    )

    def running_mean_after(top_tile: np.ndarray | None) -> torch.Tensor:
        trainer.top_tile = top_tile
        trainer.recalibrate_batchnorm(batches=8)
        return first_norm.running_mean.clone()

    on_top = running_mean_after(top)
    on_all = running_mean_after(None)
    reference = build_model("vgg_small", input_size_px=side, um_per_px=4.0)
    reference.torch_module().load_state_dict(model.torch_module().state_dict())
    bright_only = Trainer(
        options, reference, TileCache(tiles[top], np.arange(images), cache.labels,
                                      np.arange(images + 1)),
        cache, EngineConfig(), torch.device("cpu"),
    )
    bright_only.recalibrate_batchnorm(batches=8)
    expected = next(
        m for m in bright_only.network.modules() if isinstance(m, torch.nn.BatchNorm2d)
    ).running_mean
    torch.testing.assert_close(on_top, expected)
    assert not torch.allclose(on_all, expected)  # all tiles: mostly black, other statistics
