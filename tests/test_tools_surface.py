"""marginwatch.tools exports a short, importable public surface."""

from __future__ import annotations

import subprocess
import sys

import marginwatch.tools as tools


def test_public_names_resolve() -> None:
    assert tools.__all__ == sorted(tools.__all__)
    for name in tools.__all__:
        assert getattr(tools, name) is not None, name


def test_metrics_need_no_torch() -> None:
    code = "import sys, marginwatch.tools, marginwatch.tools.metrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
