"""``marginwatch predict`` in a subprocess: good and bad inputs in one run, JSON, broken models."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile
from conftest import write_fcm_tiff
from PIL import Image

CLI = Path(sys.executable).parent / "marginwatch"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), "predict", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "MARGINWATCH_CONFIG": ""},
    )


def _header_only(path: Path) -> Path:
    from test_engine_readers import _header_only_tiff

    return _header_only_tiff(path, 200_000, 200_000)


def test_predict_text_with_bad_inputs(tmp_path, tiny_model_dir):
    good = write_fcm_tiff(tmp_path / "good.tif", um_per_px=0.5)
    png = tmp_path / "good.png"
    Image.fromarray((tifffile.imread(good) // 256).astype(np.uint8)).save(png)
    text = tmp_path / "notes.tif"
    text.write_text("this is not an image")
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    huge = _header_only(tmp_path / "huge.tif")
    int32 = tmp_path / "int32.tif"
    tifffile.imwrite(int32, np.zeros((32, 32), np.int32))
    rgb = write_fcm_tiff(tmp_path / "rgb.tif", channels=3, dtype="uint8")
    cam = tmp_path / "cam.png"
    files = [good, text, empty, truncated, huge, int32, rgb, png]
    result = _run(*map(str, files), "--model", str(tiny_model_dir), "--cam", str(cam))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("marginwatch: research use only, not a diagnosis")
    rows = {line.split(": ", 1)[0]: line for line in lines[1:]}
    assert "no tumour at margin" in rows[str(good)] or "TUMOUR AT MARGIN" in rows[str(good)]
    assert "tiles" in rows[str(good)] and "torch-cpu" in rows[str(good)]
    assert "NOT ASSESSED" not in rows[str(png)]
    expectations = {
        text: "not a TIFF, PNG, JPEG or BMP",
        empty: "is empty (0 bytes)",
        truncated: "corrupt or truncated",
        huge: "exceeds engine.max_pixels",
        int32: "pixel type int32",
        rgb: "3 channel(s)",
    }
    for path, reason in expectations.items():
        assert rows[str(path)].startswith(f"{path}: NOT ASSESSED: "), rows[str(path)]
        assert reason in rows[str(path)]
    assert (tmp_path / "cam-1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "cam-8.png").exists() and not (tmp_path / "cam-2.png").exists()


def test_predict_json_and_synthetic_demo(tmp_path):
    from conftest import make_tiny_model

    model = make_tiny_model(tmp_path / "demo", synthetic_demo=True)
    good = write_fcm_tiff(tmp_path / "good.tif")
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    result = _run(str(good), str(empty), "--model", str(model), "--json")
    assert result.returncode == 2
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert first["assessed"] is True and first["synthetic_demo"] is True
    assert {
        "path",
        "probability",
        "decision",
        "threshold",
        "tiles",
        "model_digest",
        "backend",
        "seconds",
    } <= set(first)
    assert len(first["model_digest"]) == 64 and first["um_per_px_source"] == "tiff-resolution"
    assert second == {
        "path": str(empty),
        "assessed": False,
        "error": "UnreadableImageError",
        "reason": "is empty (0 bytes); expected an image file",
        "research_use_only": True,
    }
    assert "research use only" in result.stderr and "SYNTHETIC DEMO" in result.stderr


def test_predict_broken_model_folder(tmp_path, tiny_model_dir):
    good = write_fcm_tiff(tmp_path / "good.tif")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    card = json.loads((broken / "model.json").read_text())
    card["architecture"] = "resnet50"
    (broken / "model.json").write_text(json.dumps(card))
    result = _run(str(good), "--model", str(broken))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("marginwatch: error: ")
    assert "do not match architecture 'resnet50'" in result.stderr
    missing = _run(str(good), "--model", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "model folder not found" in missing.stderr


def test_a_model_folder_that_cannot_be_opened_gets_one_line(tmp_path, tiny_model_dir):
    """stat() failing with anything but 'not found' (a name too long here, which fails as
    root too; permission denied on a folder above for an ordinary user) is exit 2 with
    the reason, not a traceback (it was an OSError from Path.exists)."""
    good = write_fcm_tiff(tmp_path / "good.tif")
    too_long = tmp_path / ("m" * 300)
    result = _run(str(good), "--model", str(too_long))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("marginwatch: error: ")
    assert "cannot open the model folder: File name too long" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_configured_model_folder_is_never_replaced_by_the_demo_model(tmp_path):  # noqa: ANN001
    from marginwatch.daemon.prediction import DEMO_MODEL_DIR, default_model_dir

    missing = tmp_path / "site-model"
    assert default_model_dir(missing) == missing  # loading it then fails, naming it
    if DEMO_MODEL_DIR.is_dir():
        assert default_model_dir(None) == DEMO_MODEL_DIR


def test_odd_and_unreadable_arguments_each_get_one_line(tmp_path, tiny_model_dir):
    """A name with a newline prints on one line; an unreadable file and a FIFO are NOT
    ASSESSED with their reason while the others are still assessed (no usage box)."""
    import os
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from conftest import write_fcm_tiff

    base = Path(tempfile.mkdtemp(prefix="mw-predict-", dir="/tmp"))  # nobody can enter it
    os.chmod(base, 0o777)
    request_cleanup = base
    good = write_fcm_tiff(base / "two\nlines.tif", shape=(96, 96))
    locked = write_fcm_tiff(base / "locked.tif", shape=(96, 96))
    fifo = base / "pipe.tif"
    os.mkfifo(fifo)
    model = base / "model"
    shutil.copytree(tiny_model_dir, model)
    for p in (good, model, *model.iterdir()):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    os.chmod(locked, 0o000)
    prefix = []
    if os.geteuid() == 0:  # root reads a mode-000 file anyway: run as nobody
        if shutil.which("setpriv") is None:
            import pytest

            pytest.skip("running as root without setpriv: cannot make a file unreadable")
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    exe = str(Path(sys.executable).with_name("marginwatch"))
    out = subprocess.run([*prefix, exe, "predict", "--model", str(model), str(locked),
                          str(fifo), str(good)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HOME": str(base)})
    assert out.returncode == 2, out.stdout + out.stderr
    lines = [line for line in out.stdout.splitlines() if not line.startswith("marginwatch:")]
    assert len(lines) == 3, out.stdout
    assert lines[0].startswith(f"{locked}: NOT ASSESSED: ") and "ermission denied" in lines[0]
    assert lines[1].startswith(f"{fifo}: NOT ASSESSED: ") and "FIFO" in lines[1]
    assert lines[2].startswith(str(base) + "/two\\nlines.tif: ")
    assert "NOT ASSESSED" not in lines[2]
    assert "╭" not in out.stdout + out.stderr and "Traceback" not in out.stderr
    shutil.rmtree(request_cleanup, ignore_errors=True)
