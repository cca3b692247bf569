"""tools/metrics.py against scikit-learn, on random and edge-case inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from marginwatch.tools import metrics as mm
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve


def _random_case(seed: int, n: int = 60, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    y[:2] = (0, 1)  # both classes present
    p = np.clip(0.35 * y + rng.normal(0.35, 0.25, size=n), 0.0, 1.0)
    if ties:
        p = np.round(p, 1)  # many exact ties
    return y, p


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("ties", [False, True])
def test_threshold_metrics_match_sklearn(seed: int, ties: bool) -> None:
    y, p = _random_case(seed, ties=ties)
    d = p >= 0.5
    tn, fp, fn, tp = skm.confusion_matrix(y, d, labels=[0, 1]).ravel()
    assert mm.confusion_matrix(y, d) == mm.ConfusionMatrix(tp=tp, fp=fp, tn=tn, fn=fn)
    assert mm.sensitivity(y, d) == pytest.approx(skm.recall_score(y, d))
    assert mm.specificity(y, d) == pytest.approx(skm.recall_score(y, d, pos_label=0))
    assert mm.ppv(y, d) == pytest.approx(skm.precision_score(y, d))
    assert mm.npv(y, d) == pytest.approx(skm.precision_score(y, d, pos_label=0))


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("ties", [False, True])
def test_auc_roc_brier_match_sklearn(seed: int, ties: bool) -> None:
    y, p = _random_case(seed, ties=ties)
    assert mm.roc_auc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert mm.brier_score(y, p) == pytest.approx(skm.brier_score_loss(y, p), abs=1e-12)
    fpr, tpr, thr = mm.roc_curve(y, p)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(y, p, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_allclose(thr[1:], sk_thr[1:])
    assert np.trapezoid(tpr, fpr) == pytest.approx(mm.roc_auc(y, p))


@pytest.mark.parametrize("seed", range(6))
def test_reliability_and_ece_match_calibration_curve(seed: int) -> None:
    y, p = _random_case(seed, n=200)
    bins = mm.reliability_bins(y, p, n_bins=10)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    np.testing.assert_allclose([b.positive_fraction for b in bins], prob_true)
    np.testing.assert_allclose([b.mean_probability for b in bins], prob_pred)
    counts = np.array([b.count for b in bins])
    assert counts.sum() == y.size
    expected = np.sum(counts * np.abs(prob_true - prob_pred)) / y.size
    assert mm.expected_calibration_error(y, p) == pytest.approx(expected)


def test_perfect_and_inverted_scores() -> None:
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.0, 0.1, 0.2, 0.9, 1.0])
    assert mm.roc_auc(y, p) == 1.0
    assert mm.roc_auc(y, 1.0 - p) == 0.0
    assert mm.brier_score(y, y.astype(float)) == 0.0
    assert mm.brier_score(y, 1.0 - y) == 1.0
    assert mm.expected_calibration_error(y, y.astype(float)) == 0.0
    assert mm.sensitivity(y, p >= 0.5) == mm.specificity(y, p >= 0.5) == 1.0


def test_all_tied_scores_give_auc_one_half() -> None:
    y = np.array([0, 1, 0, 1, 1])
    assert (
        mm.roc_auc(y, np.full(5, 0.3))
        == pytest.approx(skm.roc_auc_score(y, np.full(5, 0.3)))
        == 0.5
    )


@pytest.mark.parametrize("only", [0, 1])
def test_one_class_only_is_undefined_not_a_crash(only: int) -> None:
    y = np.full(6, only)
    p = np.linspace(0.1, 0.9, 6)
    assert math.isnan(mm.roc_auc(y, p))
    fpr, tpr, thr = mm.roc_curve(y, p)
    assert fpr.size == tpr.size == thr.size == 0
    assert "one class" in mm.undefined_reason("auc", y)
    if only == 0:
        assert math.isnan(mm.sensitivity(y, p >= 0.5))
        assert mm.undefined_reason("sensitivity", y) == "no positive images"
        assert math.isnan(mm.threshold_for_sensitivity(y, p))
    else:
        assert math.isnan(mm.specificity(y, p >= 0.5))
    summary = mm.summarise(y, p, groups=np.arange(6), threshold=0.5, resamples=50)
    assert summary["auc"].as_dict()["value"] is None
    assert "one class" in summary["auc"].as_dict()["undefined"]
    assert summary["brier"].value == pytest.approx(skm.brier_score_loss(y, p, labels=[0, 1]))


def test_no_positive_call_makes_ppv_undefined() -> None:
    y = np.array([0, 1, 0, 1])
    d = np.zeros(4, dtype=bool)
    assert math.isnan(mm.ppv(y, d))
    assert mm.undefined_reason("ppv", y, d) == "no image called positive"
    assert mm.npv(y, d) == 0.5


def test_empty_input_is_nan() -> None:
    empty = np.array([], dtype=int)
    assert math.isnan(mm.roc_auc(empty, np.array([])))
    assert math.isnan(mm.brier_score(empty, np.array([])))
    assert math.isnan(mm.expected_calibration_error(empty, np.array([])))


def test_bad_inputs_raise_value_error_with_the_reason() -> None:
    with pytest.raises(ValueError, match="0 or 1"):
        mm.roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mm.brier_score([0, 1], [0.1, 1.2])
    with pytest.raises(ValueError, match="shape"):
        mm.roc_auc([0, 1], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        mm.roc_auc([0, 1], [0.1, float("nan")])


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 1.0])
def test_threshold_for_sensitivity_is_the_highest_reaching_the_target(target: float) -> None:
    y, p = _random_case(3, n=80)
    t = mm.threshold_for_sensitivity(y, p, target)
    assert mm.sensitivity(y, p >= t) >= target
    higher = np.unique(p[p > t])
    if higher.size:
        assert mm.sensitivity(y, p >= higher[0]) < target


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 1.0])
def test_threshold_for_specificity_is_the_lowest_reaching_the_target(target: float) -> None:
    y, p = _random_case(4, n=80)
    t = mm.threshold_for_specificity(y, p, target)
    assert mm.specificity(y, p >= t) >= target
    lower = np.unique(p[p < t])
    if lower.size:
        assert mm.specificity(y, p >= lower[-1]) < target


def test_operating_threshold_is_midway_between_the_two_targets() -> None:
    y, p = _random_case(5, n=200)
    high = mm.threshold_for_sensitivity(y, p, 0.9)
    low = mm.threshold_for_specificity(y, p, 0.5)
    assert low < high  # this case has room for both
    t = mm.operating_threshold(y, p, 0.9, 0.5)
    logit = lambda q: math.log(q / (1 - q))  # noqa: E731
    assert logit(t) == pytest.approx((logit(low) + logit(high)) / 2)
    assert mm.sensitivity(y, p >= t) >= 0.9 and mm.specificity(y, p >= t) >= 0.5
    # without a specificity target, and where none meets both: sensitivity first
    assert mm.operating_threshold(y, p, 0.9) == high
    assert mm.operating_threshold(y, p, 0.9, 1.0) == high
    assert mm.threshold_for_specificity(y, p, 1.0) > high


def test_bootstrap_resamples_patients_not_images() -> None:
    # Two patients: one all-positive with high scores, one all-negative with low scores.
    # A patient-level resample draws {A,A}, {B,B} or {A,B}: the AUC is 1.0 or undefined,
    # never anything in between; the undefined draws are counted, not averaged in.
    y = np.array([1, 1, 1, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    g = np.array(["A", "A", "A", "B", "B", "B"])
    ci = mm.bootstrap_ci(mm.roc_auc, y, p, g, resamples=400, seed=1)
    assert ci.low == ci.high == 1.0
    assert 100 < ci.valid < 300  # about half the draws hold both patients


def test_bootstrap_ci_is_seeded_and_contains_the_estimate() -> None:
    y, p = _random_case(5, n=120)
    g = np.arange(120) // 5  # 24 patients
    a = mm.bootstrap_ci(mm.roc_auc, y, p, g, resamples=300, seed=7)
    b = mm.bootstrap_ci(mm.roc_auc, y, p, g, resamples=300, seed=7)
    assert a == b
    assert a.low <= mm.roc_auc(y, p) <= a.high
    assert a.valid == 300


def test_summarise_reports_every_metric() -> None:
    y, p = _random_case(2, n=50)
    summary = mm.summarise(y, p, np.arange(50) // 2, threshold=0.5, resamples=100)
    assert tuple(summary) == mm.METRIC_NAMES
    assert summary["auc"].value == pytest.approx(skm.roc_auc_score(y, p))
    assert summary["sensitivity"].value == pytest.approx(skm.recall_score(y, p >= 0.5))
    row = summary["brier"].as_dict()
    assert row["ci_low"] <= row["value"] <= row["ci_high"]
