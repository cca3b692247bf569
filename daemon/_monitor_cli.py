"""``marginwatch monitor``: the site's performance against ground truth, drift and alarms.

Reads the database read-only (``--raise-alarms`` opens it read-write to record the alarm
conditions found, audited) and reports on the model of the newest prediction in range:

- sensitivity, specificity, PPV, NPV, AUC, Brier and ECE on the images with ground
  truth, with 95 % CIs from a bootstrap over cases (tools.metrics via tools.monitoring),
  side by side with the model card's validation figures;
- a trend per month (or per ``--per-cases`` cases), the reliability diagram and the
  ROC as PNGs in ``--report DIR`` (with ``monitor.json``);
- input drift of the images' pooled CNN features against the card's reference;
- which alarm conditions hold, and the alarms already open.

No ground truth in range is not an error: it says so, writes empty figures, exits 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ._audit_cli import parse_when

__all__ = [
    "REALARM_AFTER",
    "build_report",
    "check_drift",
    "raise_new_alarms",
    "run_monitor",
    "run_monitor_ack",
]

RESEARCH = "research use, not a diagnosis"
#: An acknowledged alarm whose condition still holds is raised again after this long.
REALARM_AFTER = timedelta(hours=24)
_CARD_KEYS = {"sensitivity": "val_sensitivity", "specificity": "val_specificity",
              "auc": "val_auc", "brier": "val_brier", "ece": "val_ece"}
_PCT = ("sensitivity", "specificity", "ppv", "npv")


def _vector(data: bytes | None) -> np.ndarray | None:
    if not data or len(data) % 4:
        return None
    return np.frombuffer(data, dtype="<f4").astype(np.float64)


def build_report(
    rows: list[Any],
    cards: dict[int, tuple[str, dict[str, Any]]],
    settings: Any,
    *,
    per_cases: int | None = None,
    drift_rows: list[Any] | None = None,
) -> dict[str, Any]:
    """The report as a JSON-able dict, with the arrays for the figures under ``_arrays``.

    ``drift_rows``: the newest rows of the reported model with their summaries (only
    those are needed for the drift test); default: ``rows`` themselves.
    """
    from marginwatch.tools import monitoring

    report: dict[str, Any] = {"research_use": RESEARCH, "model": None,
                              "images_assessed": 0, "images_with_truth": 0,
                              "performance": None, "trend": [], "drift": None,
                              "findings": [], "note": None,
                              "_arrays": {"labels": [], "probabilities": []}}
    if not rows:
        report["note"] = "no assessed images in range; no ground truth in range"
        return report
    model_id = rows[-1].model_id
    digest, card = cards.get(model_id, ("", {}))
    rows = [r for r in rows if r.model_id == model_id]
    card_metrics = card.get("metrics") or {}
    report["model"] = {
        "id": model_id, "digest": digest, "architecture": card.get("architecture"),
        "synthetic_demo": bool(card.get("synthetic_demo", False)),
        "threshold": card.get("threshold"),
        "target_sensitivity": monitoring.target_sensitivity(card, settings),
        "validation": {name: card_metrics.get(key) for name, key in _CARD_KEYS.items()},
    }
    report["images_assessed"] = len(rows)
    truth = [r for r in rows if r.truth is not None]
    report["images_with_truth"] = len(truth)
    perf = None
    if truth:
        labels = np.array([1 if r.truth == "tumour" else 0 for r in truth])
        probs = np.array([r.probability for r in truth])
        cases = [monitoring.case_of(r.rel_path) for r in truth]
        threshold = float(truth[-1].threshold)
        perf = monitoring.performance(labels, probs, cases, threshold, settings)
        report["performance"] = perf.as_dict()
        report["trend"] = [p.as_dict() for p in monitoring.trend(
            [r.created_at for r in truth], labels, probs, cases, threshold, per_cases=per_cases)]
        report["_arrays"] = {"labels": labels.tolist(), "probabilities": probs.tolist(),
                             "times": [r.created_at for r in truth], "cases": cases,
                             "threshold": threshold}
    else:
        report["note"] = "no ground truth in range"
    drift, mismatch = _drift(rows if drift_rows is None else drift_rows, card, settings)
    report["drift"] = drift.as_dict() | ({"reason": mismatch} if mismatch else {})
    report["findings"] = [
        {"kind": f.kind, "message": f.message, "details": f.details}
        for f in monitoring.findings(perf, drift, card, settings)
    ]
    return report


def _drift(rows: list[Any], card: dict[str, Any], settings: Any) -> tuple[Any, str | None]:
    """The drift test of the rows' pooled-feature summaries against the card's reference."""
    from marginwatch.tools import monitoring

    vectors = [v for v in (_vector(r.summary_data) for r in rows
                           if r.summary_kind == monitoring.SUMMARY_KIND) if v is not None]
    reference = card.get("input_reference")
    scores = np.empty((0, 0))
    mismatch = None
    if vectors and reference:
        try:
            scores = monitoring.component_scores(np.stack(vectors), reference)
        except (ValueError, KeyError) as exc:  # another summary size, an older reference
            mismatch = f"the card's input_reference does not fit these summaries: {exc}"
    return monitoring.drift_test(scores, None if mismatch else reference, settings), mismatch


def check_drift(
    store: Any, model_id: int, *, actor: str, settings: Any = None, now: datetime | None = None
) -> list[dict[str, Any]]:
    """The daemon's periodic check: input drift of this model's newest images, as an alarm.

    No ground truth and no bootstrap: cheap enough for the daemon's main loop
    (``daemon.drift_check_seconds``). Returns what :func:`raise_new_alarms` did.
    """
    from marginwatch.tools import monitoring

    settings = settings or monitoring.MonitorSettings()
    rows = store.monitor_rows(with_summaries=True, model_id=model_id,
                              latest=settings.drift_window)
    _, card = store.model_cards().get(model_id, ("", {}))
    drift, _ = _drift(rows, card, settings)
    findings = [{"kind": f.kind, "message": f.message, "details": f.details}
                for f in monitoring.findings(None, drift, card, settings)]
    report = {"model": {"id": model_id}, "findings": findings}
    return raise_new_alarms(store, report, actor=actor, now=now or datetime.now(UTC))


def raise_new_alarms(
    store: Any, report: dict[str, Any], *, actor: str, now: datetime
) -> list[dict[str, Any]]:
    """Record each finding as an alarm unless one of its kind is open (or acked < 24 h)."""
    if report["model"] is None:
        return []
    model_id = report["model"]["id"]
    existing = [a for a in store.monitor_alarms() if a.model_id == model_id]
    out = []
    for finding in report["findings"]:
        same = [a for a in existing if a.kind == finding["kind"]]
        still_open = next((a for a in same if not a.acknowledged), None)
        recent = next((a for a in same if now - a.raised_at < REALARM_AFTER), None)
        if still_open is not None:
            out.append({"kind": finding["kind"], "alarm_id": still_open.id, "state": "open"})
        elif recent is not None:
            out.append({"kind": finding["kind"], "alarm_id": recent.id,
                        "state": "acknowledged within 24 h; not raised again yet"})
        else:
            view = store.raise_alarm(finding["kind"], model_id, finding["message"],
                                     finding["details"], actor=actor, now=now)
            out.append({"kind": finding["kind"], "alarm_id": view.id, "state": "raised"})
    return out


def _fmt(value: Any, pct: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.1f} %" if pct else f"{value:.3f}"


def _text(report: dict[str, Any], alarms: list[Any], since: Any, until: Any) -> list[str]:
    lines = [f"marginwatch monitor ({RESEARCH})"]
    span = f"{since.isoformat() if since else 'start'} to {until.isoformat() if until else 'now'}"
    model = report["model"]
    if model is None:
        lines.append(f"predictions {span}: none; no ground truth in range")
    else:
        demo = " (SYNTHETIC DEMO MODEL)" if model["synthetic_demo"] else ""
        lines.append(f"model {model['architecture']} {model['digest'][:12]}{demo}; "
                     f"predictions {span}")
        lines.append(f"{report['images_assessed']} image(s) assessed, "
                     f"{report['images_with_truth']} with ground truth")
    perf = report["performance"]
    if perf is None:
        if model is not None:
            lines.append("no ground truth in range: no performance figures")
    else:
        lines.append(f"{perf['n_images']} images from {perf['n_cases']} cases "
                     f"({perf['n_positive']} tumour); threshold {perf['threshold']:.4f}; "
                     "95 % CI: bootstrap over cases")
        lines.append(f"  {'metric':<12} {'site':>9}  {'95 % CI':<19} {'card (validation)':>17}")
        for name, m in perf["metrics"].items():
            pct = name in _PCT
            ci = (f"{_fmt(m['ci_low'], pct)} - {_fmt(m['ci_high'], pct)}"
                  if m["value"] is not None else (m["undefined"] or "-"))
            card = model["validation"].get(name) if model else None
            lines.append(f"  {name:<12} {_fmt(m['value'], pct):>9}  {ci:<19} "
                         f"{_fmt(card, pct):>17}")
    drift = report["drift"] or {}
    if drift.get("p_value") is not None:
        lines.append(f"input drift: worst component {drift['component']}: KS "
                     f"{drift['ks_statistic']:.3f}, Bonferroni p={drift['p_value']:.2g} (last "
                     f"{drift['n_images']} images vs {drift['n_reference']} reference)")
    elif drift:
        lines.append(f"input drift: not tested ({drift.get('reason')})")
    if report["findings"]:
        lines.append("ALARM CONDITIONS:")
        lines += [f"  {f['kind']}: {f['message']}" for f in report["findings"]]
    else:
        lines.append("alarm conditions: none")
    for a in alarms:
        lines.append(f"open alarm #{a.id} {a.kind} raised "
                     f"{a.raised_at.isoformat(timespec='seconds')}: {a.message} "
                     f"(marginwatch monitor ack {a.id} --by NAME)")
    return lines


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and math.isnan(value):
        return None
    return str(value)


def run_monitor(
    *,
    db: str | None,
    config_path: Path | None,
    since: str | None,
    until: str | None,
    report: Path | None,
    as_json: bool,
    per_cases: int | None,
    raise_alarms: bool,
    echo: Callable[[str], Any] = print,
    settings: Any = None,
    now: datetime | None = None,
) -> int:
    from marginwatch.engine.config import load_config
    from marginwatch.storage import Store
    from marginwatch.tools.monitoring import MonitorSettings

    settings = settings or MonitorSettings()
    now = now or datetime.now(UTC)
    since_at, until_at = parse_when(since, "--since", now), parse_when(until, "--until", now)
    config = load_config(config_path)
    url = db or config.daemon.resolved_db_url()
    with Store.open(url, readonly=not raise_alarms,
                    busy_timeout_seconds=config.daemon.db_busy_timeout_seconds) as store:
        rows = store.monitor_rows(since=since_at, until=until_at)
        # the summaries (a few KB each) only for the newest images the drift test uses
        drift_rows = store.monitor_rows(
            since=since_at, until=until_at, with_summaries=True, latest=settings.drift_window,
            model_id=rows[-1].model_id) if rows else []
        result = build_report(rows, store.model_cards(), settings, per_cases=per_cases,
                              drift_rows=drift_rows)
        result["alarms"] = (raise_new_alarms(store, result, actor="marginwatch monitor", now=now)
                            if raise_alarms else [])
        open_alarms = store.open_monitor_alarms()
    arrays = result.pop("_arrays")
    result["range"] = {"since": since_at, "until": until_at}
    result["open_alarms"] = [{"id": a.id, "kind": a.kind, "message": a.message,
                              "raised_at": a.raised_at} for a in open_alarms]
    if report is not None:
        from marginwatch.tools.monitor_figures import write_figures

        write_figures(report, arrays["labels"], arrays["probabilities"],
                      _trend_points(result), (result["model"] or {}).get("validation") or {})
        (report / "monitor.json").write_text(
            json.dumps(result, indent=2, default=_json_default) + "\n")
    if as_json:
        echo(json.dumps(result, indent=2, default=_json_default))
    else:
        for line in _text(result, open_alarms, since_at, until_at):
            echo(line)
        if report is not None:
            echo(f"report: {report}/monitor.json, reliability.png, roc.png, trend.png")
    return 0


def _trend_points(result: dict[str, Any]) -> list[Any]:
    from marginwatch.tools.monitoring import TrendPoint

    def value(x: Any) -> float:
        return math.nan if x is None else float(x)

    return [TrendPoint(p["label"], p["n_images"], p["n_cases"], value(p["sensitivity"]),
                       value(p["specificity"]), value(p["auc"]), value(p["brier"]))
            for p in result["trend"]]


def run_monitor_ack(alarm_id: int, *, by: str, note: str | None, db: str | None,
                    config_path: Path | None, echo: Callable[[str], Any] = print) -> int:
    from marginwatch.engine.config import load_config
    from marginwatch.storage import Store

    config = load_config(config_path)
    url = db or config.daemon.resolved_db_url()
    with Store.open(url, busy_timeout_seconds=config.daemon.db_busy_timeout_seconds) as store:
        view = store.acknowledge_alarm(alarm_id, by.strip(), note)
    echo(f"alarm {view.id} ({view.kind}) acknowledged by {view.acknowledged_by}")
    return 0
