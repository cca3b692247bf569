"""Contact sheet of the quality gate: passed clean scans and caught degraded ones.

Drawn by ``python -m marginwatch.tools._bench_quality --sheet docs/quality-contact-sheet.png``
from the images the benchmark measured: each panel is the engine's own digital H&E
overview of the file, titled with the gate's verdict (the first failed check, its
value and threshold) or "passed".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = ["render_quality_sheet"]


def _preview(path: str) -> np.ndarray:
    from marginwatch.engine.assessment import prepare
    from marginwatch.engine.model import load_model
    from marginwatch.models import demo_model_dir

    model = load_model(demo_model_dir())
    with prepare(path, model) as prepared:
        return prepared.preview_rgb


def _title(result: object) -> tuple[str, str]:
    if isinstance(result, str):
        return f"caught: {result}", "darkorange"
    if result.passed:  # type: ignore[attr-defined]
        return "passed", "green"
    reason = result.failed[0].reason  # type: ignore[attr-defined]
    return f"caught: {reason}", "darkorange"


def render_quality_sheet(
    path: str | Path,
    passed: Sequence[tuple[str, object]],
    caught: Mapping[tuple[str, float], Sequence[tuple[str, object]]],
) -> Path:
    """One row of clean scans, then one panel per (degradation, strength) example."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("clean", p) for p in passed[:2]]
    for (kind, strength), results in caught.items():
        panels += [(f"{kind} S={strength:g}", r) for r in results[:1]]
    cols = 4
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4.3 * rows), dpi=80)
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, (label, (image, result)) in zip(np.ravel(axes), panels, strict=False):
        title, colour = _title(result)
        try:
            ax.imshow(_preview(image))
        except Exception:  # noqa: BLE001 - a refused image has no preview: say so
            ax.text(0.5, 0.5, "no preview", ha="center", va="center")
        ax.set_title(f"{label}\n{title}", fontsize=9, color=colour)
    fig.suptitle("marginwatch quality gate on synthetic scans (research use only)")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
