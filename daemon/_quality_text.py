"""The quality gate's stored report as text, for ``audit show`` and the theatre console.

The report is the JSON form of engine.quality's ``QualityReport`` (``to_dict``), as the
store keeps it with a prediction or in an ``image.failed`` event: per check its value
(None: not measurable), threshold and which way is bad, and the tile counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["quality_summary", "quality_table"]

# engine.quality.CHECKS' labels of the per-tile checks (that module imports torch, which
# the console does not load; tests/test_quality_text.py keeps the two the same)
TILE_CHECK_LABELS = {"focus": "out of focus", "saturated_fraction": "saturated"}


def _value(value: Any) -> str:
    return "not measurable" if value is None else f"{value:.4g}"


def _tiles(report: Mapping[str, Any]) -> str:
    tiles = report.get("tiles") or {}
    total, kept = tiles.get("total"), tiles.get("kept")
    if total is None or kept is None:
        return ""
    text = f"{kept} of {total} tiles kept"
    gated = {name: n for name, n in (tiles.get("gated") or {}).items() if n}
    if gated:
        why = ", ".join(f"{n} {TILE_CHECK_LABELS.get(name, name)}"
                        for name, n in sorted(gated.items()))
        text += f" ({why})"
    return text


def quality_summary(report: Mapping[str, Any] | None) -> str | None:
    """One line: ``passed, 9 of 9 tiles kept`` or ``FAILED: <reason>``; None: no report."""
    if not report:
        return None
    if report.get("passed"):
        tiles = _tiles(report)
        return "passed" + (f", {tiles}" if tiles else "")
    return f"FAILED: {report.get('reason') or 'see marginwatch audit show'}"


def quality_table(report: Mapping[str, Any] | None) -> list[str]:
    """One line per check: name, value, the bound it must keep, and ok or FAILED."""
    if not report:
        return []
    lines = []
    for name, m in (report.get("measurements") or {}).items():
        threshold = m.get("threshold")
        bound = "not checked" if threshold is None else (
            f"{'>=' if m.get('bad') == 'below' else '<='} {threshold:.4g}")
        verdict = "ok" if m.get("passed") else "FAILED"
        lines.append(f"{name:<19s}{_value(m.get('value')):>15s}  {bound:<12s} {verdict}")
    return lines
