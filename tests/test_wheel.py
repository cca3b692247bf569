"""The wheel carries the demo model: `pip install` it elsewhere, then `demo` and `predict` run.

The wheel is built from this checkout without build isolation (offline, with the dev
venv's setuptools) and installed into a fresh virtual environment that borrows the dev
venv's dependencies through a ``.pth`` line (no downloads; the dev venv's editable
``marginwatch`` is not visible there, because ``.pth`` files in a folder named by a
``.pth`` line are not run). The commands run in a folder outside the checkout, on a
scan written by the installed ``marginwatch synth``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _not_source(folder: str, names: list[str]) -> set[str]:
    """What a copy of the checkout leaves out: venvs, build outputs, caches, the demo's run."""
    out = {n for n in names if n in {"__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}
           or n.endswith(".egg-info")}
    if Path(folder) == REPO:
        out |= {n for n in names if n in {".venv", ".git", "demo", "build", "dist"}}
    return out


def _run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARGINWATCH_")}
    env.update(OMP_NUM_THREADS="1", PYTHONNOUSERSITE="1")
    env.pop("PYTHONPATH", None)
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel built from this checkout installed; returns its bin/."""
    pytest.importorskip("setuptools", minversion="77")
    root = tmp_path_factory.mktemp("wheel")
    source, dist = root / "source", root / "dist"
    # a copy, so that the build's build/ and egg-info never land in the checkout
    shutil.copytree(REPO, source, ignore=_not_source)
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "--no-index", "-w", str(dist), str(source)], cwd=root, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    wheels = list(dist.glob("marginwatch-*.whl"))
    assert len(wheels) == 1, wheels
    fresh = root / "venv"
    venv.EnvBuilder(with_pip=True).create(fresh)
    python = fresh / "bin" / "python"
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                cwd=root, timeout=60).stdout.strip()
    (Path(site) / "dev-venv-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheels[0])],
               cwd=root, timeout=300)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return fresh / "bin"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_installed_wheel_runs_demo_and_predict_outside_the_checkout(
    installed: Path, tmp_path: Path
) -> None:
    where = _run([str(installed / "python"), "-c",
                  "import marginwatch.daemon, marginwatch.models as m; "
                  "print(marginwatch.daemon.__file__); print(m.demo_model_dir())"],
                 cwd=tmp_path, timeout=60)
    assert where.returncode == 0, where.stderr
    package, demo_model = (Path(line) for line in where.stdout.split())
    assert installed.parent in package.parents and REPO not in package.parents
    assert installed.parent in demo_model.parents
    assert (demo_model / "model.json").is_file() and (demo_model / "weights.safetensors").is_file()

    synth = _run([str(installed / "marginwatch"), "synth", "scans", "--images", "1",
                  "--patients", "1"], cwd=tmp_path, timeout=300)
    assert synth.returncode == 0, synth.stdout + synth.stderr
    (image,) = (tmp_path / "scans").rglob("*.tif")
    predicted = _run([str(installed / "marginwatch"), "predict", str(image), "--json"],
                     cwd=tmp_path, timeout=300)
    assert predicted.returncode == 0, predicted.stdout + predicted.stderr
    assert '"probability"' in predicted.stdout
    assert "SYNTHETIC DEMO" in predicted.stderr + predicted.stdout

    demo = _run([str(installed / "marginwatch"), "demo", "--duration", "30"],
                cwd=tmp_path, timeout=600)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "marginwatch demo summary" in demo.stdout
    assert "daemon exit:    0" in demo.stdout
    assert (tmp_path / "demo" / "state" / "marginwatch.db").is_file()  # ./demo, not the checkout
