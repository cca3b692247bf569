"""`marginwatch export` through the real console script, in subprocesses.

``--onnx`` runs for real (the file is then loaded by onnxruntime). ``--tensorrt`` is
only checked where TensorRT is absent: a one-line message and exit code 2.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from marginwatch.engine.tensorrt_backend import tensorrt_unavailable

MARGINWATCH = str(Path(sys.executable).with_name("marginwatch"))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MARGINWATCH, "export", *args], capture_output=True, text=True,
                          timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("marginwatch: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_export_onnx_writes_a_file_onnxruntime_runs(tiny_model_dir, tmp_path) -> None:  # noqa: ANN001
    ort = pytest.importorskip("onnxruntime")
    import numpy as np

    out = tmp_path / "out" / "model.onnx"
    result = run(str(tiny_model_dir), "--onnx", str(out))
    assert result.returncode == 0, result.stderr
    assert f"ONNX: {out}" in result.stdout and "outputs logits, features" in result.stdout
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "features"]
    logits, features = session.run(None, {"input": np.zeros((2, 3, 64, 64), np.float32)})
    assert logits.shape == (2, 2) and features.shape[0] == 2
    assert [p.name for p in out.parent.iterdir()] == ["model.onnx"]  # no temp file left


def test_missing_model_folder(tmp_path) -> None:  # noqa: ANN001
    missing = tmp_path / "no-such-model"
    assert_one_line_error(run(str(missing), "--onnx", str(tmp_path / "m.onnx")), str(missing),
                          "model folder not found")
    assert not (tmp_path / "m.onnx").exists()


def test_unwritable_output(tiny_model_dir, tmp_path) -> None:  # noqa: ANN001
    blocker = tmp_path / "a-file"
    blocker.write_text("x")  # a file where the output folder should be (fails for root too)
    out = blocker / "model.onnx"
    assert_one_line_error(run(str(tiny_model_dir), "--onnx", str(out)), str(out),
                          "cannot write the ONNX file")


def test_bad_options(tiny_model_dir) -> None:  # noqa: ANN001
    assert_one_line_error(run(str(tiny_model_dir)), "nothing to export")
    assert_one_line_error(run(str(tiny_model_dir), "--tensorrt", "--precision", "int8"),
                          "--precision 'int8'")


@pytest.mark.skipif(tensorrt_unavailable() is None, reason="TensorRT and a GPU are present")
def test_export_tensorrt_without_tensorrt(tiny_model_dir, tmp_path) -> None:  # noqa: ANN001
    result = run(str(tiny_model_dir), "--tensorrt", "--cache-dir", str(tmp_path / "engines"))
    assert_one_line_error(result, "--tensorrt: cannot build a TensorRT engine here")
    assert not (tmp_path / "engines").exists()
