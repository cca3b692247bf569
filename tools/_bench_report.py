"""The benchmark's tables and its targets (issue 9), from the report dictionary."""

from __future__ import annotations

from typing import Any

from rich.table import Table

__all__ = ["print_report", "targets"]

MIB = 2**20


def _get(report: dict[str, Any], *keys: str) -> Any:
    node: Any = report
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _why_missing(report: dict[str, Any], section: str) -> str:
    node = report.get(section, {})
    return node.get("skipped") or node.get("error") or "not measured"


def _target(name: str, value: float | None, goal: float, op: str, unit: str, *,
            applies: bool = True, why_not: str = "", note: str = "") -> dict[str, Any]:
    if not applies:
        status = "n/a"
    elif value is None:
        status = "not measured"
    else:
        status = "pass" if (value <= goal if op == "<=" else value >= goal) else "miss"
    return {"name": name, "value": value, "target": f"{op} {goal:g}{unit}", "unit": unit,
            "status": status, "note": why_not if status in ("n/a", "not measured") else note}


def _settle(report: dict[str, Any]) -> str:
    value = _get(report, "daemon", "settings", "settle_seconds")
    return "shipped default" if value is None else str(value)


def targets(report: dict[str, Any], device: str, *, quick: bool, gb: float) -> list[dict[str, Any]]:
    cpu = device == "cpu"
    out = []
    e2e = _get(report, "daemon", "series", "observed", "median")
    floor = _get(report, "assess", "read_preprocess_infer", "median")
    overhead = e2e / floor if e2e is not None and floor else None
    out.append(_target(
        "daemon overhead e2e/(read+prep+fwd)", overhead, 1.3, "<=", "x",
        applies=cpu, why_not="CPU target" if not cpu else _why_missing(report, "daemon"),
        note=f"settle_seconds={_settle(report)}"))
    # issue 15: against the daemon's own stages, on screen, and under a burst
    own = _get(report, "daemon", "series", "daemon_read_preprocess_infer", "median")
    out.append(_target(
        "e2e / daemon's own read+prep+infer", e2e / own if e2e is not None and own else None,
        1.3, "<=", "x", applies=cpu, why_not="CPU target" if not cpu else _why_missing(
            report, "daemon"), note=f"p50s; settle_seconds={_settle(report)}"))
    out.append(_target(
        "commit -> dashboard p50 (s)", _get(report, "daemon", "series", "commit_to_dashboard",
                                            "median"),
        0.2, "<=", " s", why_not=_why_missing(report, "daemon"), note="series"))
    burst = _get(report, "daemon", "burst", "images_per_second")
    total = _get(report, "assess", "total", "mean")
    out.append(_target(
        "burst / standalone assess images/s", burst * total if burst and total else None,
        0.9, ">=", "x", why_not=_why_missing(report, "daemon"),
        note=_burst_note(report, total)))
    out.append(_target("CAM / forward",
                       _get(report, "gradcam", "cam_fraction_of_forward", "median"), 0.05, "<=",
                       "", why_not=_why_missing(report, "gradcam")))
    out.append(_target("speed-up vs pytorch-grad-cam",
                       _get(report, "gradcam", "speedup_vs_pytorch_grad_cam", "median"), 3.0,
                       ">=", "x", why_not=_why_missing(report, "gradcam")))
    size = _get(report, "mosaic", "size_px")
    rss = _get(report, "mosaic", "peak_rss_mib")
    failed = _get(report, "mosaic", "error")
    value = None if rss is None else rss * MIB / gb
    note = "" if size == 20_000 else f"{size} px mosaic (not 20k): indicative only"
    if failed:
        note = f"run stopped: {failed}" if "cap" in failed else note
        if "cap" not in failed:
            value = None
    out.append(_target("mosaic peak RSS (GB)", value, 2.5, "<=", " GB",
                       why_not=_why_missing(report, "mosaic"), note=note))
    out.append(_target("CUDA e2e p50, 896 px (s)", e2e if not cpu else None,
                       0.05, "<=", " s", applies=not cpu, why_not="CUDA target; CPU run"))
    out.append(_target("CUDA mosaic tiles/s", _get(report, "mosaic", "tiles_per_second"),
                       300.0, ">=", "", applies=not cpu, why_not="CUDA target; CPU run"))
    return out


def _burst_note(report: dict[str, Any], total: float | None) -> str:
    """Standalone assess's rate, and the torch threads of both sides of the ratio."""
    if not total:
        return ""
    here = _get(report, "machine", "torch_threads")
    daemon = _get(report, "daemon", "inference_threads")
    return f"assess {1 / total:.2f}/s; torch threads: assess {here}, daemon {daemon}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def print_report(report: dict[str, Any], console: Any) -> None:
    """The benchmark's report as tables, section by section, then the targets."""
    _print_machine(console, report)
    _print_forward(console, report.get("forward", {}))
    _print_assess(console, report.get("assess", {}))
    _print_daemon(console, report.get("daemon", {}))
    _print_gradcam(console, report.get("gradcam", {}))
    _print_mosaic(console, report.get("mosaic", {}))
    _print_targets(console, report)


def _print_machine(console: Any, report: dict[str, Any]) -> None:
    """The machine, the load and the model the figures come from."""
    m = report["machine"]
    console.print(f"{m['cpu_model']}, {m['cpu_cores']} cores, {m['memory_gib']} GiB, "
                  f"torch {m['torch']}, GPU {m['gpu'] or 'none'}, {m['date_utc']}; "
                  f"load average {m['loadavg_start']} -> {m.get('loadavg_end')}")
    console.print(f"model: {report.get('model', {}).get('note', '?')}; "
                  f"backend {report.get('model', {}).get('backend', '?')}")


def _print_forward(console: Any, fwd: dict[str, Any]) -> None:
    """Section 1: the forward pass alone, per tile and batch size."""
    t = Table(title="1. forward alone, per tile (the floor)")
    for col in ("variant", "batch", "p50 ms/tile", "p95 ms/tile", "tiles/s"):
        t.add_column(col)
    for run in fwd.get("variants", []):
        for batch, s in run["batches"].items():
            best = " (best)" if str(run.get("best_batch")) == batch else ""
            t.add_row(run["variant"], batch + best, _ms(s.get("median")), _ms(s.get("p95")),
                      _num(s.get("tiles_per_second"), ".1f"))
    for kind, s in fwd.get("h2d", {}).items():
        t.add_row(f"host->GPU copy, {kind}", "8", _ms(s["median"]), _ms(s["p95"]), "")
    _print(console, t, fwd)


def _print_assess(console: Any, ass: dict[str, Any]) -> None:
    """Section 2: assess per image, by stage."""
    t = Table(title=f"2. assess per image, by stage ({ass.get('images', 0)} images)")
    for col in ("stage", "p50 ms", "p95 ms"):
        t.add_column(col)
    for stage, s in ass.get("stages", {}).items():
        t.add_row(stage, _ms(s["median"]), _ms(s["p95"]))
    for label, key in (("  of which CAM map only", "cam_map_only"),
                       ("read+preprocess+infer", "read_preprocess_infer"), ("total", "total")):
        if key in ass:
            t.add_row(label, _ms(ass[key]["median"]), _ms(ass[key]["p95"]))
    _print(console, t, ass)


def _print_daemon(console: Any, d: dict[str, Any]) -> None:
    """Section 3: the daemon from rename to committed alert and dashboard."""
    t = Table(title="3. daemon end to end (rename -> prediction+alert committed)")
    for col in ("measure", "n", "p50 ms", "p95 ms"):
        t.add_column(col)
    for phase in ("series", "burst"):
        for kind, label in (("observed", "observed"), ("stamped", "stamped"),
                            ("daemon_read_preprocess_infer", "own read+prep+infer"),
                            ("commit_to_dashboard", "commit -> dashboard")):
            s = _get(d, phase, kind)
            if s:
                t.add_row(f"{phase}: {label}", str(s["n"]), _ms(s["median"]), _ms(s["p95"]))
    if "images_per_second" in d.get("burst", {}):
        t.add_row("burst: sustained images/s", str(d["files"]["burst"]),
                  _num(d["burst"]["images_per_second"]), "")
    if "states" in d:
        t.add_row("job states", str(d["states"]), "", "")
    _print(console, t, d)


def _print_gradcam(console: Any, g: dict[str, Any]) -> None:
    """Section 4: marginwatch's Grad-CAM against pytorch-grad-cam."""
    t = Table(title=f"4. Grad-CAM: marginwatch vs pytorch-grad-cam ({g.get('tiles', 0)} tiles)")
    for col in ("measure", "p50", "p95"):
        t.add_column(col)
    for label, key, ms in (("marginwatch forward+CAM (ms)", "marginwatch_forward_plus_cam", True),
                           ("marginwatch CAM map (ms)", "marginwatch_cam_map", True),
                           ("pytorch-grad-cam GradCAM (ms)", "pytorch_grad_cam", True),
                           ("CAM / forward", "cam_fraction_of_forward", False),
                           ("speed-up", "speedup_vs_pytorch_grad_cam", False),
                           ("correlation", "correlation", False),
                           ("max |difference| (normalised)", "max_abs_difference", False)):
        s = g.get(key)
        if s:
            fmt = _ms if ms else (lambda v: _num(v, ".4f"))
            t.add_row(label, fmt(s["median"]), fmt(s["p95"]))
    _print(console, t, g)


def _print_mosaic(console: Any, mo: dict[str, Any]) -> None:
    """Section 5: a large mosaic through assess."""
    t = Table(title=f"5. mosaic {mo.get('size_px', '?')} px square through assess")
    for col in ("measure", "value"):
        t.add_column(col)
    for label, key, fmt in (("tiles", "tiles", "d"), ("total s", "total_seconds", ".1f"),
                            ("prepare s", "prepare_seconds", ".1f"),
                            ("tiles/s", "tiles_per_second", ".2f"),
                            ("peak RSS MiB (wait4)", "peak_rss_mib", ".0f"),
                            ("tiles in memory MiB", "tiles_tensor_mib", ".0f"),
                            ("file MiB", "file_mib", ".0f"),
                            ("mosaic generation s (0 if cached)", "generate_seconds", ".1f")):
        if mo.get(key) is not None:
            t.add_row(label, format(mo[key], fmt))
    for key, value in mo.get("partial", {}).items():
        t.add_row(f"partial: {key}", _num(value, ".1f"))
    _print(console, t, mo)


def _print_targets(console: Any, report: dict[str, Any]) -> None:
    """The targets, reported and never asserted, and the total time."""
    t = Table(title="targets (issue 9; reported, not asserted)")
    for col in ("target", "value", "goal", "", "note"):
        t.add_column(col)
    marks = {"pass": "[green]PASS[/]", "miss": "[red]MISS[/]", "n/a": "n/a",
             "not measured": "[yellow]not measured[/]"}
    for item in report.get("targets", []):
        t.add_row(item["name"], _num(item["value"], ".3f"), item["target"],
                  marks[item["status"]], item["note"])
    console.print(t)
    console.print(f"total {report.get('seconds', 0):.0f} s")


def _print(console: Any, table: Table, section: dict[str, Any]) -> None:
    if "skipped" in section or "error" in section:
        console.print(f"[yellow]{table.title}: {section.get('skipped') or section.get('error')}[/]")
        if "error" not in section or not table.row_count:
            return
    console.print(table)
