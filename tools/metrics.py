"""The one module of metric functions for binary margin assessment.

Conventions, everywhere in this module:

- ``labels``: 1-D array of 0/1 (1 = tumour at the margin, the positive class).
- ``probabilities`` / ``scores``: 1-D float array, the same length; higher = more
  likely positive. Probabilities must lie in [0, 1] for Brier score and ECE.
- ``decisions``: 1-D bool/0-1 array, the model's call (``probability >= threshold``).
- ``groups``: 1-D array of patient ids, for the patient-level bootstrap.

A metric that is undefined for the given data (sensitivity without positives, AUC
with one class only, PPV with no positive calls) returns ``math.nan``; it never raises
and never divides by zero. :func:`undefined_reason` says why, in words, so that
reports print "undefined (no positive images)" instead of a bare NaN.

Only numpy: evaluation must not need scikit-learn (a dev dependency, used by the
tests as the reference implementation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "METRIC_NAMES",
    "BootstrapInterval",
    "ConfusionMatrix",
    "MetricSummary",
    "brier_score",
    "bootstrap_ci",
    "confusion_matrix",
    "expected_calibration_error",
    "npv",
    "ppv",
    "reliability_bins",
    "roc_auc",
    "roc_curve",
    "sensitivity",
    "specificity",
    "summarise",
    "operating_threshold",
    "threshold_for_sensitivity",
    "threshold_for_specificity",
    "undefined_reason",
]

#: The metrics :func:`summarise` reports, in report order.
METRIC_NAMES = ("sensitivity", "specificity", "ppv", "npv", "auc", "brier", "ece")


def _labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0 or 1, got values {sorted(set(y.tolist()))[:5]}")
    return y.astype(np.int64)


def _scores(scores: Sequence[float] | np.ndarray, n: int, name: str = "scores") -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) like labels, got {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return s


def _probabilities(probabilities: Sequence[float] | np.ndarray, n: int) -> np.ndarray:
    p = _scores(probabilities, n, "probabilities")
    if p.size and (p.min() < 0.0 or p.max() > 1.0):
        raise ValueError(f"probabilities must lie in [0, 1], got [{p.min():.4g}, {p.max():.4g}]")
    return p


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


@dataclass(frozen=True)
class ConfusionMatrix:
    """Counts at one threshold; positive = tumour at the margin."""

    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def confusion_matrix(
    labels: Sequence[int] | np.ndarray, decisions: Sequence[int] | np.ndarray
) -> ConfusionMatrix:
    """Counts of true/false positives/negatives."""
    y = _labels(labels)
    d = np.asarray(decisions).astype(bool)
    if d.shape != y.shape:
        raise ValueError(f"decisions must have shape {y.shape} like labels, got {d.shape}")
    pos = y == 1
    return ConfusionMatrix(
        tp=int(np.sum(d & pos)),
        fp=int(np.sum(d & ~pos)),
        tn=int(np.sum(~d & ~pos)),
        fn=int(np.sum(~d & pos)),
    )


def sensitivity(labels: Sequence[int] | np.ndarray, decisions: Sequence[int] | np.ndarray) -> float:
    """TP / (TP + FN): the fraction of positive images called positive (recall)."""
    cm = confusion_matrix(labels, decisions)
    return _ratio(cm.tp, cm.tp + cm.fn)


def specificity(labels: Sequence[int] | np.ndarray, decisions: Sequence[int] | np.ndarray) -> float:
    """TN / (TN + FP): the fraction of negative images called negative."""
    cm = confusion_matrix(labels, decisions)
    return _ratio(cm.tn, cm.tn + cm.fp)


def ppv(labels: Sequence[int] | np.ndarray, decisions: Sequence[int] | np.ndarray) -> float:
    """TP / (TP + FP): positive predictive value (precision)."""
    cm = confusion_matrix(labels, decisions)
    return _ratio(cm.tp, cm.tp + cm.fp)


def npv(labels: Sequence[int] | np.ndarray, decisions: Sequence[int] | np.ndarray) -> float:
    """TN / (TN + FN): negative predictive value."""
    cm = confusion_matrix(labels, decisions)
    return _ratio(cm.tn, cm.tn + cm.fn)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (scipy's ``rankdata('average')``)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start index of each run of equal values, and the run each element belongs to.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], sorted_values.size]
    run_rank = (starts + ends + 1) / 2.0  # mean of 1-based ranks start+1 .. end
    run_of = np.repeat(np.arange(starts.size), ends - starts)
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = run_rank[run_of]
    return ranks


def roc_auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U / (n_pos n_neg)); ties count one half.

    NaN when only one class is present (the AUC is undefined then).
    """
    y = _labels(labels)
    s = _scores(scores, y.size)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(s)
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` at every distinct score, from (0, 0) to (1, 1).

    ``thresholds[0]`` is ``inf`` (nothing called positive); the point at index i calls
    positive every score ``>= thresholds[i]``. Empty arrays when one class is missing.
    """
    y = _labels(labels)
    s = _scores(scores, y.size)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        empty = np.empty(0)
        return empty, empty, empty
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_run = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), s_sorted.size - 1]
    tps = np.cumsum(y_sorted)[last_of_run]
    fps = (last_of_run + 1) - tps
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    thresholds = np.r_[np.inf, s_sorted[last_of_run]]
    return fpr, tpr, thresholds


def brier_score(
    labels: Sequence[int] | np.ndarray, probabilities: Sequence[float] | np.ndarray
) -> float:
    """Mean squared difference between the probability of the positive class and the label."""
    y = _labels(labels)
    p = _probabilities(probabilities, y.size)
    if y.size == 0:
        return math.nan
    return float(np.mean((p - y) ** 2))


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of a reliability diagram: predictions with ``lower <= p < upper``."""

    lower: float
    upper: float
    count: int
    mean_probability: float
    positive_fraction: float


def reliability_bins(
    labels: Sequence[int] | np.ndarray,
    probabilities: Sequence[float] | np.ndarray,
    n_bins: int = 10,
) -> list[ReliabilityBin]:
    """Equal-width bins on [0, 1] (the last one closed); empty bins are omitted.

    Bin edges match scikit-learn's ``calibration_curve(strategy="uniform")``.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    y = _labels(labels)
    p = _probabilities(probabilities, y.size)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.searchsorted(edges[1:-1], p, side="right")
    out = []
    for b in range(n_bins):
        members = index == b
        count = int(members.sum())
        if count:
            out.append(
                ReliabilityBin(
                    lower=float(edges[b]),
                    upper=float(edges[b + 1]),
                    count=count,
                    mean_probability=float(p[members].mean()),
                    positive_fraction=float(y[members].mean()),
                )
            )
    return out


def expected_calibration_error(
    labels: Sequence[int] | np.ndarray,
    probabilities: Sequence[float] | np.ndarray,
    n_bins: int = 10,
) -> float:
    """ECE of the positive-class probability: sum over bins of
    ``count/n * |positive fraction - mean probability|`` (equal-width bins)."""
    y = _labels(labels)
    if y.size == 0:
        return math.nan
    bins = reliability_bins(y, probabilities, n_bins)
    return float(
        sum(b.count * abs(b.positive_fraction - b.mean_probability) for b in bins) / y.size
    )


def threshold_for_sensitivity(
    labels: Sequence[int] | np.ndarray,
    probabilities: Sequence[float] | np.ndarray,
    target: float = 0.90,
) -> float:
    """The highest threshold whose sensitivity (``p >= threshold``) reaches ``target``.

    Among thresholds that reach the target this one has the best specificity. It is
    the probability of a positive image, so that image itself is called positive. NaN
    without positive images.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    y = _labels(labels)
    p = _probabilities(probabilities, y.size)
    positives = np.sort(p[y == 1])[::-1]
    if positives.size == 0:
        return math.nan
    # Calling the k highest-scoring positives positive gives sensitivity k/n_pos.
    k = math.ceil(target * positives.size - 1e-9)
    return float(positives[max(k, 1) - 1])


def threshold_for_specificity(
    labels: Sequence[int] | np.ndarray,
    probabilities: Sequence[float] | np.ndarray,
    target: float = 0.80,
) -> float:
    """The lowest threshold whose specificity (``p < threshold`` negative) reaches ``target``.

    Among thresholds that reach the target this one has the best sensitivity: it lies
    just above the probability of the highest-scoring negative that must stay negative.
    NaN without negative images.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target specificity must be in (0, 1], got {target}")
    y = _labels(labels)
    p = _probabilities(probabilities, y.size)
    negatives = np.sort(p[y == 0])
    if negatives.size == 0:
        return math.nan
    # Calling the k lowest-scoring negatives negative gives specificity k/n_neg.
    k = math.ceil(target * negatives.size - 1e-9)
    return float(np.nextafter(negatives[max(k, 1) - 1], np.inf))


def operating_threshold(
    labels: Sequence[int] | np.ndarray,
    probabilities: Sequence[float] | np.ndarray,
    target_sensitivity: float = 0.90,
    target_specificity: float | None = None,
) -> float:
    """The decision threshold for the targets, on validation probabilities.

    Without ``target_specificity``: :func:`threshold_for_sensitivity`. With it, the
    thresholds that meet both targets form an interval, from the lowest reaching the
    specificity target to the highest reaching the sensitivity target; the threshold is
    its midpoint on the logit scale, the point furthest from both edges, so that a shift
    of a new centre's scores in either direction costs the least. When no threshold
    meets both, sensitivity comes first (the highest reaching it). NaN as the parts are.
    """
    high = threshold_for_sensitivity(labels, probabilities, target_sensitivity)
    if target_specificity is None or math.isnan(high):
        return high
    low = threshold_for_specificity(labels, probabilities, target_specificity)
    if math.isnan(low) or low > high:
        return high

    def logit(q: float) -> float:
        q = min(max(q, 1e-6), 1 - 1e-6)
        return math.log(q / (1 - q))

    return float(1.0 / (1.0 + math.exp(-(logit(low) + logit(high)) / 2)))


def undefined_reason(
    name: str,
    labels: Sequence[int] | np.ndarray,
    decisions: Sequence[int] | np.ndarray | None = None,
) -> str | None:
    """Why metric ``name`` is undefined on these data, or None when it is defined."""
    y = _labels(labels)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if y.size == 0:
        return "no images"
    if name == "sensitivity" and n_pos == 0:
        return "no positive images"
    if name == "specificity" and n_neg == 0:
        return "no negative images"
    if name == "auc" and (n_pos == 0 or n_neg == 0):
        return f"only one class present ({'positive' if n_neg == 0 else 'negative'} images only)"
    if decisions is not None and name in ("ppv", "npv"):
        d = np.asarray(decisions).astype(bool)
        if name == "ppv" and not d.any():
            return "no image called positive"
        if name == "npv" and d.all():
            return "no image called negative"
    return None


@dataclass(frozen=True)
class BootstrapInterval:
    """A percentile confidence interval from a patient-level bootstrap."""

    low: float
    high: float
    level: float
    resamples: int
    valid: int  # resamples in which the metric was defined


def bootstrap_ci(
    metric: Callable[[np.ndarray, np.ndarray], float],
    labels: Sequence[int] | np.ndarray,
    values: Sequence[float] | np.ndarray,
    groups: Sequence[object] | np.ndarray,
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> BootstrapInterval:
    """Percentile CI of ``metric(labels, values)`` resampling *patients* with replacement.

    Images of one patient are correlated, so each resample draws as many patients as
    there are, with replacement, and takes all images of each drawn patient. Resamples
    where the metric is undefined (for example no positive image drawn) are dropped and
    counted: ``valid`` says how many remained. Bounds are NaN when fewer than 10% of
    resamples were valid.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    y = _labels(labels)
    v = np.asarray(values)
    g = np.asarray(groups)
    if v.shape[0] != y.size or g.shape[0] != y.size:
        raise ValueError(
            f"labels ({y.size}), values ({v.shape[0]}) and groups ({g.shape[0]}) differ in length"
        )
    if y.size == 0:
        return BootstrapInterval(math.nan, math.nan, level, resamples, 0)
    _, group_index = np.unique(g, return_inverse=True)
    members = [np.flatnonzero(group_index == k) for k in range(group_index.max() + 1)]
    rng = np.random.default_rng(seed)
    estimates = []
    for _ in range(resamples):
        drawn = rng.integers(0, len(members), size=len(members))
        idx = np.concatenate([members[k] for k in drawn])
        value = metric(y[idx], v[idx])
        if not math.isnan(value):
            estimates.append(value)
    if len(estimates) < max(1, resamples // 10):
        return BootstrapInterval(math.nan, math.nan, level, resamples, len(estimates))
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(estimates, [tail, 100.0 - tail])
    return BootstrapInterval(float(low), float(high), level, resamples, len(estimates))


@dataclass(frozen=True)
class MetricSummary:
    """One metric on one data set: point estimate, CI and, when undefined, why."""

    name: str
    value: float
    ci: BootstrapInterval
    undefined: str | None = None

    def as_dict(self) -> dict[str, object]:
        def clean(x: float) -> float | None:
            return None if math.isnan(x) else round(float(x), 6)

        return {
            "value": clean(self.value),
            "ci_low": clean(self.ci.low),
            "ci_high": clean(self.ci.high),
            "ci_level": self.ci.level,
            "bootstrap_resamples": self.ci.resamples,
            "bootstrap_valid": self.ci.valid,
            "undefined": self.undefined,
        }


def summarise(
    labels: Sequence[int] | np.ndarray,
    probabilities: Sequence[float] | np.ndarray,
    groups: Sequence[object] | np.ndarray,
    threshold: float,
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    n_bins: int = 10,
) -> dict[str, MetricSummary]:
    """Every metric of :data:`METRIC_NAMES` with its patient-level bootstrap CI.

    Decisions are ``probability >= threshold``, as the engine decides.
    """
    y = _labels(labels)
    p = _probabilities(probabilities, y.size)
    d = p >= threshold

    threshold_metrics: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
        "sensitivity": sensitivity,
        "specificity": specificity,
        "ppv": ppv,
        "npv": npv,
    }
    out: dict[str, MetricSummary] = {}
    for name in METRIC_NAMES:
        if name in threshold_metrics:
            fn = threshold_metrics[name]
            value, values = fn(y, d), d
        elif name == "auc":
            fn, value, values = roc_auc, roc_auc(y, p), p
        elif name == "brier":
            fn, value, values = brier_score, brier_score(y, p), p
        else:

            def fn(yy: np.ndarray, pp: np.ndarray) -> float:
                return expected_calibration_error(yy, pp, n_bins)

            value, values = fn(y, p), p
        ci = bootstrap_ci(fn, y, values, groups, resamples=resamples, level=level, seed=seed)
        out[name] = MetricSummary(name, value, ci, undefined_reason(name, y, d))
    return out
