"""The quality gate on real TIFFs: generator scans with each degradation, degenerate images,
thresholds through the model card and the configuration, ``predict --json`` and
``synth --degrade`` in a subprocess.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from marginwatch.engine import load_model
from marginwatch.engine.assessment import assess, check_quality, prepare
from marginwatch.engine.card import QualityThresholds, read_card
from marginwatch.engine.config import EngineConfig, load_config
from marginwatch.engine.errors import (
    InputError,
    InvalidPixelsError,
    NoTissueError,
    QualityGateError,
)
from marginwatch.engine.quality import CHECKS, SHIPPED_THRESHOLDS, effective_thresholds
from marginwatch.models import demo_model_dir
from marginwatch.tools._degrade import DEGRADATIONS, degrade
from marginwatch.tools._quality_thresholds import derive_thresholds, measure_image
from marginwatch.tools.synth import generate_image, write_image

CLI = Path(sys.executable).parent / "marginwatch"

# the check each degradation (at full strength) must trip first or among others
EXPECTED = {
    "blur": {"focus", "kept_tissue_share"},
    "saturate": {"saturated_fraction", "kept_tissue_share"},
    "faint": {"signal_range"},
    "bubbles": {"void_fraction"},
    "partial": {"tissue_fraction"},
    "seams": {"seam_score"},
}


@pytest.fixture(scope="module")
def demo_model():  # noqa: ANN201
    return load_model(demo_model_dir())


@pytest.fixture(scope="module")
def scans(tmp_path_factory):  # noqa: ANN001, ANN201
    """A clean generator scan (1024 px at 1 um/px) and one copy per degradation, as TIFFs."""
    folder = tmp_path_factory.mktemp("scans")
    image = generate_image(np.random.default_rng(5), "benign", kind="benign")
    clean = write_image(folder / "clean.tif", image)
    paths = {"clean": clean}
    for kind in DEGRADATIONS:
        rng = np.random.default_rng(11)
        degraded = degrade(image.pixels, kind, 1.0, rng, profile=image.profile,
                           centre=image.centre, um_per_px=image.um_per_px)
        assert degraded.dtype == image.pixels.dtype and degraded.shape == image.pixels.shape
        image_copy = type(image)(**{**image.__dict__, "pixels": degraded})
        paths[kind] = write_image(folder / f"{kind}.tif", image_copy)
    return paths


def _report(path: Path, model, engine: EngineConfig | None = None):  # noqa: ANN001, ANN202
    with prepare(path, model, engine) as prepared:
        for _ in prepared.iter_tiles(8):
            pass
        return check_quality(prepared, model, engine)


def test_clean_scan_passes_and_every_measurement_is_finite(scans, demo_model) -> None:
    report = _report(scans["clean"], demo_model)
    assert report.passed, report.reason
    assert set(report.to_dict()["measurements"]) == set(CHECKS)
    for m in report.measurements:
        assert m.value is not None and math.isfinite(m.value), m
        assert m.threshold is not None  # the shipped defaults cover every check
    assert len(report.tiles_kept) == report.tiles_total


@pytest.mark.parametrize("kind", DEGRADATIONS)
def test_each_degradation_is_caught_with_its_reason(scans, demo_model, kind: str) -> None:
    report = _report(scans[kind], demo_model)
    assert not report.passed
    failed = {m.name for m in report.failed}
    assert failed & EXPECTED[kind], (kind, report.reason)
    first = report.failed[0]
    op = "<" if first.check.bad == "below" else ">"
    assert report.reason.startswith(f"{first.check.label}: {first.name} ")
    assert f" {op} " in report.reason


def test_blurred_scan_is_not_assessable_and_names_focus(scans, demo_model) -> None:
    with pytest.raises(QualityGateError) as caught:
        assess(scans["blur"], demo_model)
    message = str(caught.value)
    assert "not assessable: out of focus: focus " in message
    assert caught.value.report is not None and not caught.value.report.passed


def test_failed_tiles_are_left_out_of_the_decision(tmp_path, tiny_model_dir) -> None:
    """Blur the right quarter of a clean scan: its tiles are dropped, the rest decide."""
    model = load_model(tiny_model_dir)  # 64 px tiles at 1 um/px: 4 x 4 tiles on 256 px
    image = generate_image(np.random.default_rng(5), "benign", kind="benign", size_px=256)
    pixels = image.pixels.copy()
    pixels[:, 192:] = degrade(image.pixels, "blur", 1.0, np.random.default_rng(3))[:, 192:]
    path = write_image(tmp_path / "quarter.tif", type(image)(**{**image.__dict__,
                                                                "pixels": pixels}))
    result = assess(path, model)
    assert result.quality is not None and result.quality.passed, result.quality
    gated = result.quality.tiles_total - len(result.quality.tiles_kept)
    assert gated >= 3 and result.quality.tiles_gated.get("focus", 0) == gated
    assert len(result.tiles) == len(result.quality.tiles_kept)
    assert all(t.box[0] < 192 for t in result.tiles)  # only the sharp tiles decide
    # the same scan blurred all over is not assessable (so blurred that at 256 px the
    # tissue mask finds no structure left, or out of focus)
    blurred = degrade(image.pixels, "blur", 1.0, np.random.default_rng(3))
    path = write_image(tmp_path / "all.tif", type(image)(**{**image.__dict__,
                                                            "pixels": blurred}))
    with pytest.raises(InputError, match="not assess"):
        assess(path, model)


def _degenerate(tmp_path: Path, name: str) -> Path:
    if name == "black":
        data = np.zeros((256, 256), np.uint16)
    elif name == "saturated":
        data = np.full((256, 256), 65535, np.uint16)
    elif name == "constant":
        data = np.full((256, 256), 20000, np.uint16)
    else:  # one pixel wide
        data = (np.random.default_rng(0).random((256, 1)) * 60000).astype(np.uint16)
    path = tmp_path / f"{name}.tif"
    tifffile.imwrite(path, data, resolution=(1e4, 1e4), resolutionunit="CENTIMETER")
    return path


@pytest.mark.parametrize("name", ["black", "saturated", "constant", "one-pixel-wide"])
def test_degenerate_images_end_not_assessable_with_a_reason(tmp_path, tiny_model_dir,
                                                            name: str) -> None:
    model = load_model(tiny_model_dir)
    path = _degenerate(tmp_path, name)
    with pytest.raises(InputError) as caught:
        assess(path, model)
    # the readers refuse pixels that are no measurement (constant, ...); the tissue mask
    # finds none on black glass; the gate names what it measured on the rest
    assert isinstance(caught.value, InvalidPixelsError | NoTissueError | QualityGateError)
    assert str(caught.value).strip()
    report = getattr(caught.value, "report", None)
    if report is not None:
        assert report.reason
        for m in report.measurements:
            assert m.value is None or math.isfinite(m.value)
        json.dumps(report.to_dict(), allow_nan=False)  # stored and printed as strict JSON


def test_thresholds_round_trip_through_the_model_card(tmp_path, tiny_model_dir, scans,
                                                      demo_model) -> None:
    measured = [measure_image(scans["clean"], demo_model)] * 3
    derived = derive_thresholds(measured, source="test images")
    assert derived.focus_min is not None and derived.focus_min < measured[0]["focus"]
    assert "3 test images" in derived.derived_from
    model = load_model(tiny_model_dir)
    folder = tmp_path / "with-thresholds"
    model.update_card(quality=derived)
    model.save(folder)
    again = read_card(folder)
    assert again.quality == derived
    assert json.loads((folder / "model.json").read_text())["quality"]["focus_min"] == (
        derived.focus_min
    )
    # the engine uses the card's thresholds, and the configuration overrides one of them
    assert effective_thresholds(again.quality, {}) == derived
    loaded = load_model(folder)
    strict = EngineConfig(quality_focus_min=1e6)
    report = _report(scans["clean"], loaded, strict)
    assert [m.name for m in report.failed][:1] == ["focus"]
    assert "< 1000000" in report.reason
    assert effective_thresholds(None, {}) == SHIPPED_THRESHOLDS


def test_config_overrides_each_threshold_from_toml_and_environment(tmp_path) -> None:
    toml = tmp_path / "mw.toml"
    toml.write_text("[engine]\nquality_void_fraction_max = 0.2\n")
    config = load_config(toml, environ={"MARGINWATCH_ENGINE__QUALITY_FOCUS_MIN": "12.5"})
    overrides = config.engine.quality_overrides()
    assert overrides["focus_min"] == 12.5 and overrides["void_fraction_max"] == 0.2
    assert set(overrides) == set(QualityThresholds.model_fields) - {"derived_from"}
    merged = effective_thresholds(None, overrides)
    assert merged.focus_min == 12.5 and merged.void_fraction_max == 0.2
    assert merged.signal_range_min == SHIPPED_THRESHOLDS.signal_range_min
    bad = tmp_path / "bad.toml"
    bad.write_text("[engine]\nquality_tissue_fraction_min = 3\n")
    from marginwatch.engine.errors import ConfigError

    with pytest.raises(ConfigError, match="quality_tissue_fraction_min"):
        load_config(bad, environ={})


def test_predict_json_shows_measurements_and_the_reason(scans) -> None:
    done = subprocess.run(
        [str(CLI), "predict", "--json", str(scans["clean"]), str(scans["blur"])],
        capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "MARGINWATCH_CONFIG": ""},
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    clean, blurred = (json.loads(line) for line in done.stdout.splitlines())
    assert clean["assessed"] and clean["quality"]["passed"]
    assert clean["quality"]["measurements"]["focus"]["bad"] == "below"
    assert not blurred["assessed"] and blurred["error"] == "QualityGateError"
    assert blurred["reason"].startswith("not assessable: out of focus: focus ")
    focus = blurred["quality"]["measurements"]["focus"]
    assert focus["value"] < focus["threshold"] and not focus["passed"]


def test_synth_degrade_writes_the_truth_and_refuses_bad_options(tmp_path) -> None:
    out = tmp_path / "blurred"
    done = subprocess.run(
        [str(CLI), "synth", str(out), "--images", "2", "--patients", "1", "--size-px", "256",
         "--workers", "1", "--degrade", "blur", "--strength", "0.5"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    with (out / "manifest.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2
    assert {(r["degradation"], r["strength"]) for r in rows} == {("blur", "0.5")}
    assert tifffile.imread(out / rows[0]["path"]).shape == (256, 256)
    for args, word in ((["--degrade", "smudge"], "smudge"), (["--degrade", "blur",
                                                             "--strength", "2"], "strength")):
        bad = subprocess.run(
            [str(CLI), "synth", str(tmp_path / "bad"), "--images", "1", "--patients", "1",
             "--size-px", "128", *args],
            capture_output=True, text=True, timeout=120,
        )
        assert bad.returncode == 2 and word in bad.stderr and "Traceback" not in bad.stderr
        assert not (tmp_path / "bad" / "manifest.csv").exists()
