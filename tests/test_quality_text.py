"""The quality gate's report as people read it: ``audit show`` lines and the console's."""

from __future__ import annotations

from marginwatch.daemon._quality_text import TILE_CHECK_LABELS, quality_summary, quality_table
from marginwatch.engine.quality import CHECKS, SHIPPED_THRESHOLDS, gate


def _report(focus: list[float], *, tissue: float = 0.8) -> dict:
    tiles = [{"focus": f, "saturated_fraction": 0.0} for f in focus]
    image = {"tissue_fraction": tissue, "saturated_fraction": 0.0, "signal_range": 0.3,
             "void_fraction": 0.0, "seam_score": 3.0}
    return gate(image, tiles, [1.0] * len(focus), SHIPPED_THRESHOLDS).to_dict()


def test_the_console_names_the_tile_checks_as_the_engine_does() -> None:
    for name, label in TILE_CHECK_LABELS.items():
        assert CHECKS[name].label == label


def test_a_passed_report_says_so_with_the_tiles_left_out() -> None:
    report = _report([400.0, 400.0, 10.0])  # one tile out of focus, 2/3 of the tissue kept
    assert report["passed"] is True
    assert quality_summary(report) == "passed, 2 of 3 tiles kept (1 out of focus)"
    lines = quality_table(report)
    assert len(lines) == len(CHECKS)
    (focus,) = [line for line in lines if line.startswith("focus ")]
    assert focus.split() == ["focus", "400", ">=", "165", "ok"]  # median of the tiles


def test_a_failed_report_gives_the_reason_and_marks_the_check() -> None:
    report = _report([400.0], tissue=0.1)
    assert quality_summary(report) == (
        "FAILED: too little tissue: tissue_fraction 0.100 < 0.250")
    (tissue,) = [line for line in quality_table(report) if line.startswith("tissue_fraction")]
    assert tissue.split()[-1] == "FAILED" and "0.1" in tissue and ">= 0.25" in tissue


def test_not_measurable_and_no_report() -> None:
    report = _report([400.0])
    report["measurements"]["seam_score"]["value"] = None
    (seam,) = [line for line in quality_table(report) if line.startswith("seam_score")]
    assert "not measurable" in seam
    assert quality_summary(None) is None and quality_table(None) == []
