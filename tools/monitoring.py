"""Live performance at the site: metrics against ground truth, trends, drift and alarms.

Pure computation on arrays (no database, no torch): ``marginwatch monitor`` reads the
rows from storage and hands them here. Every metric and its confidence interval comes
from :mod:`marginwatch.tools.metrics` (:func:`~marginwatch.tools.metrics.summarise`,
bootstrap over **cases**: the first folder under the export root); nothing is
re-implemented. The statistics and thresholds are written down in docs/monitoring.md.

Three alarms (:func:`findings`):

- ``sensitivity``: the upper bound of the 95 % CI of sensitivity is below the card's
  target sensitivity (``metrics.target_sensitivity`` in the card, else 0.90);
- ``calibration``: the lower bound of the CI of the Brier score (or of the ECE) is
  worse than the card's validation value plus ``calibration_margin``;
- ``input-drift`` (no ground truth needed): each image's mean pooled CNN feature
  vector is standardised and projected on the top principal axes of held-out
  training-centre images (the card's ``input_reference``: ``mu``, ``sigma``, ``axes``,
  ``scale`` and those images' own scores); for each axis the most recent
  ``drift_window`` images' scores are compared with the reference scores by the
  two-sample Kolmogorov-Smirnov test (scipy); alarm when the smallest p-value times
  the number of axes (Bonferroni) is below ``drift_p_value``, with at least
  ``drift_min_images`` images.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from . import metrics

__all__ = [
    "DEFAULT_TARGET_SENSITIVITY",
    "SUMMARY_KIND",
    "DriftResult",
    "Finding",
    "MonitorSettings",
    "Performance",
    "TrendPoint",
    "case_of",
    "drift_test",
    "component_scores",
    "findings",
    "performance",
    "reference_from_features",
    "trend",
]

#: What :class:`~marginwatch.storage.models.PredictionSummary` rows hold for drift.
SUMMARY_KIND = "pooled-features/v1"
DEFAULT_TARGET_SENSITIVITY = 0.90
_SIGMA_FLOOR = 1e-6
_REFERENCE_MAX = 500  # reference images' scores kept in the card


@dataclass(frozen=True)
class MonitorSettings:
    """Thresholds of the alarms (docs/monitoring.md); every one has a default."""

    target_sensitivity: float | None = None  # None: the card's, else 0.90
    calibration_margin: float = 0.05
    drift_p_value: float = 0.001
    drift_window: int = 200
    drift_min_images: int = 30
    min_positives: int = 5  # fewer tumour images with truth: no sensitivity alarm
    min_images: int = 20  # fewer images with truth: no performance/calibration alarm
    resamples: int = 2000
    level: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.target_sensitivity is not None and not 0 < self.target_sensitivity <= 1:
            raise ValueError(f"target_sensitivity must be in (0, 1], got {self.target_sensitivity}")
        if not 0 < self.drift_p_value < 1:
            raise ValueError(f"drift_p_value must be in (0, 1), got {self.drift_p_value}")
        if self.calibration_margin < 0:
            raise ValueError(f"calibration_margin must be >= 0, got {self.calibration_margin}")
        if self.drift_window < 2 or self.drift_min_images < 2:
            raise ValueError("drift_window and drift_min_images must be >= 2")


def case_of(rel_path: str) -> str:
    """The case of an image: the first folder under the export root (else the file)."""
    return rel_path.split("/", 1)[0]


# --- performance against ground truth -------------------------------------------------


@dataclass(frozen=True)
class Performance:
    """Metrics with case-level bootstrap CIs on the images that have ground truth."""

    n_images: int
    n_cases: int
    n_positive: int
    threshold: float
    metrics: dict[str, metrics.MetricSummary]
    confusion: metrics.ConfusionMatrix

    def as_dict(self) -> dict[str, Any]:
        return {
            "n_images": self.n_images,
            "n_cases": self.n_cases,
            "n_positive": self.n_positive,
            "threshold": self.threshold,
            "confusion_matrix": self.confusion.as_dict(),
            "metrics": {k: v.as_dict() for k, v in self.metrics.items()},
        }


def performance(
    labels: Sequence[int] | np.ndarray,
    probabilities: Sequence[float] | np.ndarray,
    cases: Sequence[str],
    threshold: float,
    settings: MonitorSettings,
) -> Performance:
    """:func:`metrics.summarise` with a bootstrap over cases (``cases[i]`` of image i)."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    summary = metrics.summarise(
        y, p, np.asarray(cases), threshold,
        resamples=settings.resamples, level=settings.level, seed=settings.seed,
    )
    return Performance(
        n_images=int(y.size),
        n_cases=len(set(cases)),
        n_positive=int(y.sum()),
        threshold=float(threshold),
        metrics=summary,
        confusion=metrics.confusion_matrix(y, p >= threshold),
    )


@dataclass(frozen=True)
class TrendPoint:
    """One period (a month, or a block of N cases): point estimates, no CIs."""

    label: str
    n_images: int
    n_cases: int
    sensitivity: float
    specificity: float
    auc: float
    brier: float

    def as_dict(self) -> dict[str, Any]:
        def clean(x: float) -> float | None:
            return None if math.isnan(x) else round(float(x), 6)

        return {
            "label": self.label, "n_images": self.n_images, "n_cases": self.n_cases,
            "sensitivity": clean(self.sensitivity), "specificity": clean(self.specificity),
            "auc": clean(self.auc), "brier": clean(self.brier),
        }


def trend(
    times: Sequence[datetime],
    labels: Sequence[int] | np.ndarray,
    probabilities: Sequence[float] | np.ndarray,
    cases: Sequence[str],
    threshold: float,
    *,
    per_cases: int | None = None,
) -> list[TrendPoint]:
    """Per calendar month (UTC) of the prediction, or per block of ``per_cases`` cases.

    Blocks follow the order in which each case was first assessed; a case is never
    split between two blocks.
    """
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    if per_cases is not None and per_cases < 1:
        raise ValueError(f"per_cases must be >= 1, got {per_cases}")
    keys: list[str] = []
    if per_cases is None:
        keys = [t.strftime("%Y-%m") for t in times]
    else:
        order: dict[str, int] = {}
        for c in cases:
            order.setdefault(c, len(order))
        for c in cases:
            block = order[c] // per_cases
            keys.append(f"cases {block * per_cases + 1}-{(block + 1) * per_cases}")
    points = []
    for key in dict.fromkeys(keys):
        idx = np.flatnonzero(np.asarray(keys) == key)
        yy, pp = y[idx], p[idx]
        d = pp >= threshold
        points.append(
            TrendPoint(
                label=key,
                n_images=int(idx.size),
                n_cases=len({cases[i] for i in idx}),
                sensitivity=metrics.sensitivity(yy, d),
                specificity=metrics.specificity(yy, d),
                auc=metrics.roc_auc(yy, pp),
                brier=metrics.brier_score(yy, pp),
            )
        )
    return points


# --- input drift ---------------------------------------------------------------------


def _matrix(vectors: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"feature vectors must be (N >= 1, K); got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("feature vectors contain NaN or infinite values")
    return x


def reference_from_features(
    vectors: Sequence[Sequence[float]] | np.ndarray, *, source: str, components: int = 5
) -> dict[str, Any]:
    """The card's ``input_reference`` from held-out training-centre images' summaries.

    ``vectors`` (N, K): each image's mean pooled CNN features. Features are standardised
    (``mu``, ``sigma``), the top ``components`` principal directions of the reference
    are kept (``axes``, with ``scale`` = the score standard deviation), and the
    reference images' own scores (N, components; at most 500 rows) are stored so that
    new images can be compared with them.
    """
    x = _matrix(vectors)
    n, k_features = x.shape
    if n < 3:
        raise ValueError("a drift reference needs at least 3 images")
    mu = x.mean(axis=0)
    sigma = np.maximum(x.std(axis=0, ddof=1), _SIGMA_FLOOR)
    z = (x - mu) / sigma
    k = max(1, min(components, n - 1, k_features))
    _, singular, vt = np.linalg.svd(z, full_matrices=False)
    scale = np.maximum(singular[:k] / math.sqrt(n - 1), _SIGMA_FLOOR)
    scores = z @ vt[:k].T / scale
    if n > _REFERENCE_MAX:
        keep = np.sort(np.random.default_rng(0).choice(n, _REFERENCE_MAX, replace=False))
        scores = scores[keep]
    return {
        "kind": SUMMARY_KIND,
        "statistic": "two-sample KS per principal component, Bonferroni over components",
        "source": source,
        "n_images": int(n),
        "mu": [round(float(v), 7) for v in mu],
        "sigma": [round(float(v), 7) for v in sigma],
        "axes": [[round(float(v), 7) for v in row] for row in vt[:k]],
        "scale": [round(float(v), 7) for v in scale],
        "scores": [[round(float(v), 5) for v in row] for row in scores],
    }


def component_scores(
    vectors: Sequence[Sequence[float]] | np.ndarray, reference: Mapping[str, Any]
) -> np.ndarray:
    """(N, components) scores of images' summaries on the reference's principal axes."""
    x = _matrix(vectors)
    mu = np.asarray(reference["mu"], dtype=np.float64)
    sigma = np.maximum(np.asarray(reference["sigma"], dtype=np.float64), _SIGMA_FLOOR)
    axes = np.asarray(reference["axes"], dtype=np.float64)
    scale = np.asarray(reference["scale"], dtype=np.float64)
    if mu.shape != (x.shape[1],) or axes.shape[1:] != mu.shape:
        raise ValueError(
            f"feature vectors have {x.shape[1]} values; the card's reference has {mu.size}"
        )
    return ((x - mu) / sigma) @ axes.T / scale


@dataclass(frozen=True)
class DriftResult:
    """The KS tests of recent images' component scores against the reference's."""

    n_images: int
    n_reference: int
    statistic: float  # KS statistic of the component with the smallest p-value
    p_value: float  # Bonferroni-adjusted: min over components of p, times their number
    component: int | None  # 0-based index of that component
    alarm: bool
    reason: str | None = None  # why no test was made (too few images, no reference)

    def as_dict(self) -> dict[str, Any]:
        def clean(x: float) -> float | None:
            return None if math.isnan(x) else float(f"{x:.6g}")

        return {
            "n_images": self.n_images, "n_reference": self.n_reference,
            "ks_statistic": clean(self.statistic), "p_value": clean(self.p_value),
            "component": self.component, "alarm": self.alarm, "reason": self.reason,
        }


def drift_test(
    scores: Sequence[Sequence[float]] | np.ndarray,
    reference: Mapping[str, Any] | None,
    settings: MonitorSettings,
) -> DriftResult:
    """KS (scipy) of the most recent ``drift_window`` images' scores, per component."""
    from scipy.stats import ks_2samp

    nan = math.nan
    ref = np.asarray(reference["scores"], dtype=np.float64) if reference else np.empty((0, 0))
    s = np.asarray(scores, dtype=np.float64)
    s = (s if s.ndim == 2 else s.reshape(0, 0))[-settings.drift_window :]
    if ref.ndim != 2 or ref.shape[0] < 3:
        return DriftResult(int(s.shape[0]), 0, nan, nan, None, False,
                           "the model card has no input_reference (train writes one)")
    if s.shape[0] and s.shape[1] != ref.shape[1]:
        raise ValueError(f"scores have {s.shape[1]} components; the reference has "
                         f"{ref.shape[1]}")
    if s.shape[0] < settings.drift_min_images:
        return DriftResult(int(s.shape[0]), int(ref.shape[0]), nan, nan, None, False,
                           f"{s.shape[0]} image(s) with a summary; the test needs "
                           f"{settings.drift_min_images}")
    tests = [ks_2samp(s[:, j], ref[:, j]) for j in range(ref.shape[1])]
    worst = int(np.argmin([t.pvalue for t in tests]))
    p_value = min(1.0, float(tests[worst].pvalue) * len(tests))
    return DriftResult(int(s.shape[0]), int(ref.shape[0]), float(tests[worst].statistic),
                       p_value, worst, p_value < settings.drift_p_value)


# --- alarms ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """An alarm condition that holds: its kind, one line for the dashboard, the figures."""

    kind: str  # "sensitivity" | "calibration" | "input-drift"
    message: str
    details: dict[str, Any] = field(default_factory=dict)


def target_sensitivity(card: Mapping[str, Any], settings: MonitorSettings) -> float:
    if settings.target_sensitivity is not None:
        return settings.target_sensitivity
    value = (card.get("metrics") or {}).get("target_sensitivity")
    return float(value) if isinstance(value, (int, float)) else DEFAULT_TARGET_SENSITIVITY


def _performance_findings(
    perf: Performance, card: Mapping[str, Any], settings: MonitorSettings
) -> list[Finding]:
    out: list[Finding] = []
    if perf.n_images < settings.min_images:
        return out
    target = target_sensitivity(card, settings)
    sens = perf.metrics["sensitivity"]
    if perf.n_positive >= settings.min_positives and not math.isnan(sens.ci.high):
        if sens.ci.high < target:
            out.append(Finding(
                "sensitivity",
                f"sensitivity {sens.value:.1%} (95% CI {sens.ci.low:.1%}-{sens.ci.high:.1%}, "
                f"{perf.n_positive} tumour images) is below the target {target:.0%}",
                {"value": sens.value, "ci_low": sens.ci.low, "ci_high": sens.ci.high,
                 "target": target, "n_positive": perf.n_positive, "n_images": perf.n_images},
            ))
    card_metrics = card.get("metrics") or {}
    for name, card_key in (("brier", "val_brier"), ("ece", "val_ece")):
        reference = card_metrics.get(card_key)
        m = perf.metrics[name]
        if not isinstance(reference, (int, float)) or math.isnan(m.ci.low):
            continue
        limit = float(reference) + settings.calibration_margin
        if m.ci.low > limit:
            out.append(Finding(
                "calibration",
                f"{name} {m.value:.3f} (95% CI {m.ci.low:.3f}-{m.ci.high:.3f}) is worse than "
                f"the card's {float(reference):.3f} + margin {settings.calibration_margin:g}",
                {"metric": name, "value": m.value, "ci_low": m.ci.low, "ci_high": m.ci.high,
                 "card": float(reference), "margin": settings.calibration_margin,
                 "n_images": perf.n_images},
            ))
            break  # one calibration finding is enough
    return out


def findings(
    perf: Performance | None,
    drift: DriftResult | None,
    card: Mapping[str, Any],
    settings: MonitorSettings,
) -> list[Finding]:
    """Every alarm condition that holds now (see the module docstring)."""
    out = [] if perf is None else _performance_findings(perf, card, settings)
    if drift is not None and drift.alarm:
        out.append(Finding(
            "input-drift",
            f"input drift: image features differ from the training reference "
            f"(component {drift.component}, KS {drift.statistic:.2f}, p={drift.p_value:.1e} "
            f"< {settings.drift_p_value:g}, last {drift.n_images} images)",
            drift.as_dict(),
        ))
    return out
