"""``marginwatch bench``: latency, throughput, Grad-CAM cost and memory, on synthetic images.

Five sections, each after warm-up, each with median and p95:

1. ``forward``: the model's forward alone per tile at batch 1 and at the best batch (the
   floor), for one or several :class:`~._bench_engine.ForwardVariant` (``--sweep``);
2. ``assess``: ``assess`` per image by stage (read, preprocess, infer, cam, aggregate);
3. ``daemon``: a real ``marginwatch run`` subprocess, rename-to-commit latency and a
   burst's sustained images/s (:mod:`._bench_daemon`);
4. ``gradcam``: marginwatch's exact CAM against pytorch-grad-cam's GradCAM on the same
   model and tiles: time ratio and correlation;
5. ``mosaic``: one large tiled TIFF (20,000 px square; smaller with ``--quick``) through
   ``assess`` in a child process: total time, tiles/s, peak RSS (:mod:`._bench_mosaic`).

The model: ``--model DIR``; else ``models/demo`` when present; else a randomly
initialised model of the demo's architecture and input size (said in the output:
timings do not depend on the weights). ``--quick`` uses a random model of the same
architecture at a small input size (unless ``--model`` is given) and few repetitions,
so all five sections run in about a minute on 2 CPU cores.

Targets (issue 9) are reported, never asserted: daemon overhead (end-to-end p50 /
read+preprocess+forward p50) <= 1.3 on CPU; CAM <= 5 % of forward and >= 3x faster
than pytorch-grad-cam; peak RSS <= 2.5 GB on the 20k mosaic; on CUDA end-to-end p50
<= 50 ms for one 896 px region and >= 300 tiles/s on mosaics.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from marginwatch.engine.errors import ConfigError

from ._bench_report import print_report, targets

__all__ = ["BenchOptions", "SECTIONS", "run_bench"]

SECTIONS = ("forward", "assess", "daemon", "gradcam", "mosaic")
DEMO_ARCHITECTURE = "mobilenet_v3_large"
DEMO_INPUT_PX = 896
GB = 1e9


@dataclass
class BenchOptions:
    device: str = "cpu"
    quick: bool = False
    json_out: Path | None = None
    model_dir: Path | None = None
    precision: str | None = None  # default: fp16 on cuda, fp32 on cpu
    channels_last: bool | None = None  # default: on for cuda (as the engine does), off on cpu
    compile: bool = False
    cuda_graphs: bool = False
    sweep: bool = False
    sections: tuple[str, ...] = SECTIONS
    daemon_files: int | None = None  # latency series length
    burst_files: int | None = None  # burst length (default: as many as the series)
    mosaic_timeout_seconds: float | None = None  # stop the mosaic child; report what it did
    mosaic_px: int | None = None
    mosaic_rss_cap_mib: float = 8192.0
    settle_seconds: float | None = None  # None: the daemon's shipped defaults
    poll_interval_seconds: float | None = None
    cache_dir: Path | None = None
    quick_input_px: int = 224
    threads: int | None = None  # torch intra-op threads here and in the subprocesses
    notes: list[str] = field(default_factory=list)


@dataclass
class _Plan:
    """Counts for one run (full or quick)."""

    forward_batches: tuple[int, ...]
    forward_repeats: int
    warmup: int
    assess_images: int
    gradcam_tiles: int
    daemon_warmup: int
    daemon_series: int
    daemon_burst: int
    mosaic_px: int
    timeout_seconds: float


def _plan(options: BenchOptions) -> _Plan:
    cuda = options.device == "cuda"
    if options.quick:
        plan = _Plan((1, 4), 5, 1, 4, 3, 1, 5, 5, 1024, 300.0)
    else:
        batches = (1, 2, 4, 8, 16, 32, 64) if cuda else (1, 2, 4)
        plan = _Plan(batches, 20 if cuda else 5, 3 if cuda else 1, 20 if cuda else 8,
                     16 if cuda else 6, 3, 100, 100, 20_000, 3600.0)
    if options.daemon_files is not None:
        plan.daemon_series = plan.daemon_burst = options.daemon_files
    if options.burst_files is not None:
        plan.daemon_burst = options.burst_files
    if options.mosaic_px is not None:
        plan.mosaic_px = options.mosaic_px
    return plan


def _repo_demo() -> Path | None:
    from marginwatch.models import demo_model_dir

    for candidate in (Path.cwd() / "models" / "demo", demo_model_dir()):
        if (candidate / "model.json").is_file():
            return candidate
    return None


def _resolve_model(options: BenchOptions, workdir: Path) -> tuple[Any, Path, str]:
    """(Model, its folder, a sentence saying which model this is)."""
    from marginwatch.engine import build_model, load_model
    from marginwatch.engine.card import read_card

    if options.model_dir is not None:
        model = load_model(options.model_dir)
        return model, Path(options.model_dir), (
            f"model {options.model_dir} ({model.card.architecture}, "
            f"{model.card.input_size_px} px, digest {model.digest[:12]})")
    demo = _repo_demo()
    arch, size = DEMO_ARCHITECTURE, DEMO_INPUT_PX
    if demo is not None:
        card = read_card(demo)
        arch, size = card.architecture, card.input_size_px
        if not options.quick:
            model = load_model(demo)
            return model, demo, (f"demo model {demo} ({arch}, {size} px, "
                                 f"digest {model.digest[:12]})")
    where = "models/demo" if demo is not None else "no models/demo found"
    if options.quick:
        size = options.quick_input_px
        why = f"--quick: {where}; random {arch} at a reduced {size} px input"
    else:
        why = f"{where}: random {arch} at {size} px (timings do not depend on the weights)"
    model = build_model(arch, input_size_px=size, description="marginwatch bench: random weights")
    folder = model.save(workdir / "model")
    return model, folder, why


def _section(name: str, options: BenchOptions, report: dict[str, Any], run: Any) -> None:
    if name not in options.sections:
        report[name] = {"skipped": "not selected with --sections"}
        return
    started = time.perf_counter()
    try:
        report[name] = run()
    except Exception as exc:  # a broken section must not hide the others' figures
        report[name] = {"error": f"{type(exc).__name__}: {exc}"}
    report[name]["section_seconds"] = time.perf_counter() - started
    if options.json_out is not None:  # progress: what is done so far survives an interruption
        _write_json(options.json_out, {**report, "partial": True})


def _write_json(path: Path, report: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(json.dumps(_jsonable(report), indent=2) + "\n", encoding="utf-8")
    os.replace(temp, path)


def run_bench(options: BenchOptions, *, console: Any = None) -> dict[str, Any]:
    """Run the selected sections; print rich tables; write ``--json``; return the report."""
    import torch
    from marginwatch.engine import select_backend
    from marginwatch.engine.config import EngineConfig
    from rich.console import Console

    from ._bench_data import RegionFactory, default_cache_dir, write_mosaic
    from ._bench_engine import (
        ForwardVariant,
        measure_assess,
        measure_forward,
        measure_gradcam,
        measure_h2d,
    )
    from ._bench_stats import machine_facts

    console = console or Console()
    unknown = [s for s in options.sections if s not in SECTIONS]
    if unknown:
        raise ConfigError(f"--sections: unknown {', '.join(unknown)}; expected some of "
                          f"{', '.join(SECTIONS)}")
    if options.device not in ("cpu", "cuda"):
        raise ConfigError(f"--device {options.device!r}: expected cpu or cuda")
    cuda = options.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is available to torch on this machine")
    if not cuda and (options.cuda_graphs or options.precision == "fp16"):
        raise ConfigError("--cuda-graphs and --precision fp16 need --device cuda")
    precision = options.precision or ("fp16" if cuda else "fp32")
    channels_last = options.channels_last if options.channels_last is not None else cuda
    if options.threads is not None:
        # a shared machine: fewer threads than cores can be much faster (no spinning
        # OpenMP barriers against other people's processes); children inherit it
        torch.set_num_threads(options.threads)
        os.environ["OMP_NUM_THREADS"] = str(options.threads)
    plan = _plan(options)
    device = torch.device(options.device)
    started = time.perf_counter()
    report: dict[str, Any] = {"machine": machine_facts(), "options": _jsonable(asdict(options))}
    workdir = Path(tempfile.mkdtemp(prefix="marginwatch-bench-"))
    try:
        model, model_dir, model_note = _resolve_model(options, workdir)
        card = model.card
        console.print(f"[bold]marginwatch bench[/] on {options.device}: {model_note}")
        console.print(f"load average at start: {report['machine']['loadavg_start']} "
                      f"({report['machine']['cpu_cores']} cores)")
        engine = EngineConfig(backend="torch-cuda" if cuda else "torch-cpu", precision=precision)
        backend = select_backend(model, engine)
        report["model"] = {"note": model_note, "architecture": card.architecture,
                           "input_size_px": card.input_size_px, "um_per_px": card.um_per_px,
                           "digest": model.digest, "backend": backend.describe(),
                           "random_weights": "random" in model_note}
        report["plan"] = asdict(plan)
        from ._acquisition import CENTRES

        synth_um = CENTRES["development"].um_per_px
        region_px = max(128, round(card.input_size_px * card.um_per_px / synth_um))
        regions = workdir / "regions"
        regions.mkdir(parents=True)

        def holds_tissue(path: Path) -> bool:
            """Tissue, and it passes the quality gate: the bench times assessments."""
            from marginwatch.engine.assessment import check_quality, prepare
            from marginwatch.engine.errors import InputError

            try:
                with prepare(path, model, engine) as prepared:
                    for _ in prepared.iter_tiles(64):
                        pass
                    return check_quality(prepared, model, engine).passed
            except InputError:
                return False

        factory = RegionFactory(region_px, fields=4, accept=holds_tissue, scratch=regions)
        paths = [str(factory.write(regions / f"r{i:03d}.tif"))
                 for i in range(plan.warmup + plan.assess_images)]
        report["inputs"] = {"region_px": region_px, "synth_um_per_px": synth_um}

        def forward() -> dict[str, Any]:
            variants = [ForwardVariant(precision == "fp16", channels_last, options.compile,
                                       options.cuda_graphs)]
            if options.sweep:
                variants = _sweep(cuda)
            runs = [measure_forward(model.torch_module(), card.input_size_px, device, v,
                                    plan.forward_batches, repeats=plan.forward_repeats,
                                    warmup=plan.warmup) for v in variants]
            out: dict[str, Any] = {"variants": runs, "chosen": variants[0].name}
            if cuda:
                out["h2d"] = measure_h2d(card.input_size_px, 8, device, repeats=10)
            return out

        _section("forward", options, report, forward)
        _section("assess", options, report, lambda: measure_assess(
            paths, model, engine, backend, warmup=plan.warmup))

        def gradcam() -> dict[str, Any]:
            from marginwatch.engine.assessment import prepare

            tiles = [prepare(p, model, engine).tiles for p in paths[: plan.gradcam_tiles + 1]]
            batch = torch.cat(tiles)[: plan.gradcam_tiles + 1]
            return measure_gradcam(model, backend, batch, device, warmup=1)

        _section("gradcam", options, report, gradcam)

        def daemon() -> dict[str, Any]:
            from ._bench_daemon import run_daemon_case

            return run_daemon_case(
                workdir / "daemon", model_dir, factory, warmup=plan.daemon_warmup,
                series=plan.daemon_series, burst=plan.daemon_burst, gap_seconds=0.05,
                device=options.device, precision=precision,
                settle_seconds=options.settle_seconds,
                poll_interval_seconds=options.poll_interval_seconds, max_batch_wait_ms=None,
                workers=None, poll_db_seconds=0.005, timeout_seconds=plan.timeout_seconds)

        _section("daemon", options, report, daemon)

        def mosaic() -> dict[str, Any]:
            from ._bench_mosaic import run_mosaic_child

            cache = options.cache_dir or default_cache_dir()
            t0 = time.perf_counter()
            small = plan.mosaic_px <= 2048  # fewer, smaller synthetic fields suffice
            image, cached = write_mosaic(cache, plan.mosaic_px, fields=2 if small else 6,
                                         field_px=512 if small else 1024)
            made = time.perf_counter() - t0
            cap = min(options.mosaic_rss_cap_mib, _available_mib() - 1024)
            out = run_mosaic_child(model_dir, image, workdir / "mosaic.json",
                                   backend=engine.backend, precision=precision,
                                   batch_size=engine.batch_size, rss_cap_mib=cap,
                                   timeout_seconds=options.mosaic_timeout_seconds
                                   or plan.timeout_seconds)
            out.update({"image": str(image), "size_px": plan.mosaic_px, "cached": cached,
                        "generate_seconds": made, "rss_cap_mib": cap,
                        "file_mib": image.stat().st_size / 2**20})
            return out

        _section("mosaic", options, report, mosaic)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["machine"]["loadavg_end"] = list(os.getloadavg())
    report["seconds"] = time.perf_counter() - started
    report["targets"] = targets(report, options.device, quick=options.quick, gb=GB)
    print_report(report, console)
    if options.json_out is not None:
        _write_json(options.json_out, report)
    return report


def _sweep(cuda: bool) -> list[Any]:
    from ._bench_engine import ForwardVariant as V

    if not cuda:
        return [V(), V(channels_last=True)]
    return [V(), V(fp16=True), V(fp16=True, channels_last=True),
            V(fp16=True, channels_last=True, cuda_graphs=True),
            V(fp16=True, channels_last=True, compile=True)]


def _available_mib() -> float:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("inf")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    return value
