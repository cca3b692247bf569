"""The evaluation report's figures and text: ROC, reliability diagram, Grad-CAM gallery,
``report.md``. matplotlib with the Agg backend (no display); no torch here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
from marginwatch.engine.render import heatmap_overlay_png  # noqa: E402

from . import metrics  # noqa: E402

__all__ = [
    "PAPER",
    "GalleryItem",
    "plot_learning_curves",
    "plot_reliability",
    "plot_roc",
    "write_gallery",
    "write_markdown",
]

#: Fang, Mayor et al. (BJU Int 2026), as reported: the scientific anchor.
PAPER = {
    "internal": {"n": 57, "sensitivity": 0.875, "specificity": 0.979, "auc": 0.93, "brier": 0.16},
    "external": {"n": 46, "sensitivity": 0.913, "specificity": 0.739, "auc": 0.83, "brier": 0.20},
}
OUTCOMES = ("TP", "FP", "FN", "TN")
_LABELS = {
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "ppv": "PPV",
    "npv": "NPV",
    "auc": "AUC",
    "brier": "Brier score",
    "ece": "ECE (10 bins)",
}


def plot_learning_curves(history: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Training loss, validation AUC and validation Brier score (temperature 1) per epoch
    from ``training.json``'s history, as one PNG of three panels."""
    epochs = [h["epoch"] for h in history]

    def series(key: str) -> list[float]:
        return [math.nan if h.get(key) is None else float(h[key]) for h in history]

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), dpi=110)
    panels = (
        ("loss", "Training loss (focal, weighted)", None),
        ("val_auc", "Validation AUC (image level)", (0.0, 1.02)),
        ("val_brier", "Validation Brier score (T = 1)", (0.0, None)),
    )
    for ax, (key, title, ylim) in zip(axes, panels, strict=True):
        ax.plot(epochs, series(key), marker="o", ms=3, lw=1.5)
        ax.set(title=title, xlabel="epoch")
        if ylim is not None:
            ax.set_ylim(bottom=ylim[0], top=ylim[1])
        ax.grid(alpha=0.3)
    fig.suptitle("marginwatch train: learning curves (research use)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_roc(sets: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path) -> None:
    """ROC curve per set (``name -> (labels, probabilities)``), AUC in the legend."""
    fig, ax = plt.subplots(figsize=(4.6, 4.6), dpi=120)
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--", label="chance")
    for name, (y, p) in sets.items():
        fpr, tpr, _ = metrics.roc_curve(y, p)
        if fpr.size == 0:
            ax.plot([], [], label=f"{name}: AUC undefined (one class)")
            continue
        ax.step(fpr, tpr, where="post", lw=1.8, label=f"{name}: AUC {metrics.roc_auc(y, p):.3f}")
    ax.set(
        xlabel="1 - specificity",
        ylabel="Sensitivity",
        xlim=(0, 1),
        ylim=(0, 1.02),
        title="ROC (image level)",
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_reliability(
    sets: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path, n_bins: int = 10
) -> None:
    """Observed tumour fraction against mean predicted probability, per set."""
    fig, ax = plt.subplots(figsize=(4.6, 4.6), dpi=120)
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--", label="perfect calibration")
    for name, (y, p) in sets.items():
        bins = metrics.reliability_bins(y, p, n_bins)
        ece = metrics.expected_calibration_error(y, p, n_bins)
        ax.plot(
            [b.mean_probability for b in bins],
            [b.positive_fraction for b in bins],
            marker="o",
            lw=1.5,
            label=f"{name}: ECE {ece:.3f}",
        )
        for b in bins:
            ax.annotate(
                str(b.count),
                (b.mean_probability, b.positive_fraction),
                fontsize=6,
                xytext=(3, -8),
                textcoords="offset points",
            )
    ax.set(
        xlabel="Mean predicted probability",
        ylabel="Observed tumour fraction",
        xlim=(0, 1),
        ylim=(-0.02, 1.02),
        title=f"Reliability ({n_bins} bins; n per point)",
    )
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@dataclass
class GalleryItem:
    """One assessed image chosen for the gallery."""

    set_name: str
    outcome: str  # TP | FP | FN | TN
    image: str
    probability: float
    heatmap: np.ndarray  # (h, w) in [0, 1]
    preview_rgb: np.ndarray | None  # (h, w, 3) uint8


def write_gallery(items: Sequence[GalleryItem], folder: Path) -> list[tuple[GalleryItem, str]]:
    """One Grad-CAM overlay PNG per item and a grid figure ``gallery.png``; returns paths."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for k, item in enumerate(items):
        name = f"{item.set_name}-{item.outcome}-{k:02d}.png"
        (folder / name).write_bytes(heatmap_overlay_png(item.heatmap, item.preview_rgb))
        written.append((item, f"{folder.name}/{name}"))
    if items:
        rows = sorted({(i.set_name) for i in items})
        fig, axes = plt.subplots(
            len(rows), 4, figsize=(12, 3.2 * len(rows)), dpi=100, squeeze=False
        )
        for r, set_name in enumerate(rows):
            for c, outcome in enumerate(OUTCOMES):
                ax = axes[r][c]
                ax.axis("off")
                chosen = [
                    (i, p) for i, p in written if i.set_name == set_name and i.outcome == outcome
                ]
                if not chosen:
                    ax.set_title(f"{set_name} {outcome}: none", fontsize=9)
                    continue
                item, rel = chosen[0]
                ax.imshow(plt.imread(folder.parent / rel))
                ax.set_title(f"{set_name} {outcome}  p={item.probability:.2f}", fontsize=9)
        fig.suptitle(
            "Grad-CAM (research use; heat = evidence for tumour at the margin)", fontsize=10
        )
        fig.tight_layout()
        fig.savefig(folder / "gallery.png")
        plt.close(fig)
    return written


def _fmt(value: float | None, pct: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{100 * value:.1f} %" if pct else f"{value:.3f}"


def _metric_rows(set_name: str, summary: Mapping[str, Any]) -> list[str]:
    rows = []
    paper = PAPER.get(set_name, {})
    for name, label in _LABELS.items():
        m = summary[name]
        pct = name in ("sensitivity", "specificity", "ppv", "npv")
        if m["value"] is None:
            value = f"undefined ({m['undefined']})" if m["undefined"] else "—"
            ci = "—"
        else:
            value = _fmt(m["value"], pct)
            ci = f"{_fmt(m['ci_low'], pct)} – {_fmt(m['ci_high'], pct)}"
            if m["bootstrap_valid"] < m["bootstrap_resamples"]:
                ci += f" ({m['bootstrap_valid']}/{m['bootstrap_resamples']} resamples defined)"
        rows.append(f"| {label} | {value} | {ci} | {_fmt(paper.get(name), pct)} |")
    return rows


def write_markdown(
    path: Path, result: Mapping[str, Any], gallery: Sequence[tuple[GalleryItem, str]]
) -> None:
    """``report.md`` from the metrics.json structure and the gallery files."""
    model = result["model"]
    lines = _header_lines(result)
    for set_name, data in result["sets"].items():
        lines += _set_lines(set_name, data, model["threshold"])
    lines += ["", "## Figures", "", "![ROC](roc.png)", "", "![Reliability](reliability.png)"]
    if gallery:
        lines += _gallery_lines(gallery)
    lines += [
        "",
        "Files: `metrics.json`, `predictions.csv` (image, patient, centre, label, "
        "probability, decision), `roc.png`, `reliability.png`, `gallery/`.",
        "",
    ]
    path.write_text("\n".join(lines))


def _header_lines(result: Mapping[str, Any]) -> list[str]:
    """Title, the research-use and synthetic-model warnings, the model and the method."""
    model = result["model"]
    lines = [
        "# marginwatch evaluation report",
        "",
        "**Research use only; not a medical device.**",
    ]
    if model.get("synthetic_demo"):
        lines += [
            "",
            "> **Synthetic demo model.** It was trained and is evaluated here on images from "
            "marginwatch's synthetic FCM generator. These numbers say that the pipeline runs "
            "end to end; they mean nothing clinically and cannot be compared with the paper's "
            "as evidence of anything.",
        ]
    return lines + [
        "",
        f"- Model: `{model['architecture']}`, digest `{model['digest'][:16]}…`, input "
        f"{model['input_size_px']} px at {model['um_per_px']} µm/px, profile `{model['profile']}`",
        f"- Calibration: temperature {model['temperature']:.3f}; decision threshold "
        f"{model['threshold']:.4f} (from the model card)",
        f"- Inference: backend `{result['backend']}` on {result['device']}; tile aggregation "
        f"`{result['aggregation']}`",
        f"- 95 % confidence intervals: percentile bootstrap over **patients** "
        f"({result['bootstrap']['resamples']} resamples, seed {result['bootstrap']['seed']}); "
        "a resample in which a metric is undefined is dropped and counted.",
        "- Paper: Fang, Mayor et al., BJU Int 2026 (internal n=57, external n=46), as reported.",
    ]


def _set_lines(set_name: str, data: Mapping[str, Any], threshold: float) -> list[str]:
    """One set's section: what was assessed, what was not, metrics and confusion matrix."""
    cm = data["confusion_matrix"]
    lines = [
        "",
        f"## {set_name.capitalize()} set",
        "",
        f"Manifest `{data['manifest']}`: {data['n_assessed']} images assessed "
        f"({data['n_positive']} tumour, {data['n_assessed'] - data['n_positive']} benign) "
        f"from {data['n_patients']} patients, centre(s) {', '.join(data['centres'])}.",
    ]
    if data["not_assessed"]:
        lines.append(
            f"**{len(data['not_assessed'])} image(s) could not be assessed** and are "
            "excluded from the metrics (see predictions.csv)."
        )
    if data.get("n_gated"):
        by = ", ".join(f"{k} {v}" for k, v in data["gated_by"].items())
        lines.append(
            f"Of these, {data['n_gated']} failed the quality gate ({by}); the metrics "
            "are those of the assessable images."
        )
    return lines + [
        "",
        "| Metric | marginwatch | 95 % CI | Paper |",
        "|---|---|---|---|",
        *_metric_rows(set_name, data["metrics"]),
        "",
        f"Confusion matrix at threshold {threshold:.4f}:",
        "",
        "| | called tumour | called benign |",
        "|---|---|---|",
        f"| tumour at margin | TP {cm['tp']} | FN {cm['fn']} |",
        f"| no tumour at margin | FP {cm['fp']} | TN {cm['tn']} |",
    ]


def _gallery_lines(gallery: Sequence[tuple[GalleryItem, str]]) -> list[str]:
    """The Grad-CAM gallery: the contact sheet and one row per example."""
    lines = [
        "",
        "## Grad-CAM gallery",
        "",
        "The most confident example of each outcome per set (TP/FP: highest probability; "
        "FN/TN: lowest). Heat = the engine's exact Grad-CAM for the tumour class, each "
        "tile's map scaled by its calibrated probability.",
        "",
        "![Gallery](gallery/gallery.png)",
        "",
        "| Set | Outcome | Image | Probability | Overlay |",
        "|---|---|---|---|---|",
    ]
    for item, rel in gallery:
        lines.append(
            f"| {item.set_name} | {item.outcome} | `{item.image}` | "
            f"{item.probability:.3f} | [png]({rel}) |"
        )
    return lines
