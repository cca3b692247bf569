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

import functools
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
    region_px: int | None = None  # side of the timed scans; None: one model field
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


@dataclass
class _Bench:
    """What the sections share: resolved options, the model, its backend and the inputs."""

    options: BenchOptions
    plan: _Plan
    device: Any  # torch.device
    precision: str
    channels_last: bool
    workdir: Path
    model: Any
    model_dir: Path
    engine: Any  # EngineConfig
    backend: Any
    factory: Any  # RegionFactory: the daemon section writes more regions
    paths: list[str]

    @property
    def cuda(self) -> bool:
        return self.options.device == "cuda"


def run_bench(options: BenchOptions, *, console: Any = None) -> dict[str, Any]:
    """Run the selected sections; print rich tables; write ``--json``; return the report."""
    from rich.console import Console

    from ._bench_stats import machine_facts

    console = console or Console()
    _check_options(options)
    threads = _apply_threads(options)
    plan = _plan(options)
    started = time.perf_counter()
    report: dict[str, Any] = {"machine": machine_facts(), "options": _jsonable(asdict(options))}
    report["machine"]["torch_threads"] = threads
    workdir = Path(tempfile.mkdtemp(prefix="marginwatch-bench-"))
    try:
        bench = _prepare(options, plan, workdir, report, console)
        _run_sections(bench, report)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["machine"]["loadavg_end"] = list(os.getloadavg())
    report["seconds"] = time.perf_counter() - started
    report["targets"] = targets(report, options.device, quick=options.quick, gb=GB)
    print_report(report, console)
    if options.json_out is not None:
        _write_json(options.json_out, report)
    return report


def _check_options(options: BenchOptions) -> None:
    """Refuse what cannot run before anything is built (a ConfigError the CLI turns into rc 2)."""
    import torch

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


def _apply_threads(options: BenchOptions) -> int:
    """torch's CPU threads, here and (through the environment) in the subprocesses:
    ``--threads``, else on the CPU the daemon's own default (``daemon.inference_threads``),
    so that standalone ``assess``, the mosaic child and the daemon it is compared with all
    run with the same threads. Returns the number."""
    import torch

    threads = options.threads
    if threads is None and options.device == "cpu":
        from marginwatch.daemon import inference_threads
        from marginwatch.engine.config import Config

        threads = inference_threads(Config())
    if threads is not None:
        # (on a shared machine fewer threads than cores can be much faster: no spinning
        # OpenMP barriers against other people's processes)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)
    return torch.get_num_threads()


def _prepare(options: BenchOptions, plan: _Plan, workdir: Path, report: dict[str, Any],
             console: Any) -> _Bench:
    """Model, backend and synthetic regions; their facts go into ``report`` as they are known."""
    import torch
    from marginwatch.engine import select_backend
    from marginwatch.engine.config import EngineConfig

    cuda = options.device == "cuda"
    precision = options.precision or ("fp16" if cuda else "fp32")
    channels_last = options.channels_last if options.channels_last is not None else cuda
    model, model_dir, model_note = _resolve_model(options, workdir)
    card = model.card
    console.print(f"[bold]marginwatch bench[/] on {options.device}: {model_note}")
    console.print(f"load average at start: {report['machine']['loadavg_start']} "
                  f"({report['machine']['cpu_cores']} cores, "
                  f"{report['machine']['torch_threads']} torch threads)")
    engine = EngineConfig(backend="torch-cuda" if cuda else "torch-cpu", precision=precision)
    backend = select_backend(model, engine)
    report["model"] = {"note": model_note, "architecture": card.architecture,
                       "input_size_px": card.input_size_px, "um_per_px": card.um_per_px,
                       "digest": model.digest, "backend": backend.describe(),
                       "random_weights": "random" in model_note}
    report["plan"] = asdict(plan)
    factory, paths = _write_regions(workdir, model, engine, plan, report, options.region_px)
    return _Bench(options, plan, torch.device(options.device), precision, channels_last,
                  workdir, model, model_dir, engine, backend, factory, paths)


def _write_regions(workdir: Path, model: Any, engine: Any, plan: _Plan,
                   report: dict[str, Any], region_px: int | None) -> tuple[Any, list[str]]:
    """Regions at the synthetic centre's scale, each with tissue: one model input square, or
    ``region_px`` square (a whole scan of several tiles, as a scanner writes for a model
    whose field is smaller than the scan)."""
    from ._acquisition import CENTRES
    from ._bench_data import RegionFactory

    card = model.card
    synth_um = CENTRES["development"].um_per_px
    if region_px is None:
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
    return factory, paths


def _run_sections(bench: _Bench, report: dict[str, Any]) -> None:
    """Each section in turn (this order, not SECTIONS'), each recorded by :func:`_section`."""
    for name, measure in (("forward", _forward), ("assess", _assess), ("gradcam", _gradcam),
                          ("daemon", _daemon), ("mosaic", _mosaic)):
        _section(name, bench.options, report, functools.partial(measure, bench))


def _forward(bench: _Bench) -> dict[str, Any]:
    """The forward alone, for the options' variant or, with ``--sweep``, several."""
    from ._bench_engine import ForwardVariant, measure_forward, measure_h2d

    options, plan, size = bench.options, bench.plan, bench.model.card.input_size_px
    variants = [ForwardVariant(bench.precision == "fp16", bench.channels_last, options.compile,
                               options.cuda_graphs)]
    if options.sweep:
        variants = _sweep(bench.cuda)
    runs = [measure_forward(bench.model.torch_module(), size, bench.device, v,
                            plan.forward_batches, repeats=plan.forward_repeats,
                            warmup=plan.warmup) for v in variants]
    out: dict[str, Any] = {"variants": runs, "chosen": variants[0].name}
    if bench.cuda:
        out["h2d"] = measure_h2d(size, 8, bench.device, repeats=10)
    return out


def _assess(bench: _Bench) -> dict[str, Any]:
    """``assess`` per image, by stage."""
    from ._bench_engine import measure_assess

    return measure_assess(bench.paths, bench.model, bench.engine, bench.backend,
                          warmup=bench.plan.warmup)


def _gradcam(bench: _Bench) -> dict[str, Any]:
    """Exact CAM against pytorch-grad-cam on tiles of the regions."""
    import torch
    from marginwatch.engine.assessment import prepare

    from ._bench_engine import measure_gradcam

    count = bench.plan.gradcam_tiles + 1
    tiles = [prepare(p, bench.model, bench.engine).tiles for p in bench.paths[:count]]
    batch = torch.cat(tiles)[:count]
    return measure_gradcam(bench.model, bench.backend, batch, bench.device, warmup=1)


def _daemon(bench: _Bench) -> dict[str, Any]:
    """A real ``marginwatch run`` subprocess fed by the factory's regions."""
    from ._bench_daemon import run_daemon_case

    options, plan = bench.options, bench.plan
    return run_daemon_case(
        bench.workdir / "daemon", bench.model_dir, bench.factory, warmup=plan.daemon_warmup,
        series=plan.daemon_series, burst=plan.daemon_burst, gap_seconds=0.05,
        device=options.device, precision=bench.precision,
        settle_seconds=options.settle_seconds,
        poll_interval_seconds=options.poll_interval_seconds, max_batch_wait_ms=None,
        workers=None, poll_db_seconds=0.005, timeout_seconds=plan.timeout_seconds)


def _mosaic(bench: _Bench) -> dict[str, Any]:
    """One large tiled TIFF (cached between runs) through ``assess`` in a child process."""
    from ._bench_data import default_cache_dir, write_mosaic
    from ._bench_mosaic import run_mosaic_child

    options, plan, engine = bench.options, bench.plan, bench.engine
    cache = options.cache_dir or default_cache_dir()
    t0 = time.perf_counter()
    small = plan.mosaic_px <= 2048  # fewer, smaller synthetic fields suffice
    image, cached = write_mosaic(cache, plan.mosaic_px, fields=2 if small else 6,
                                 field_px=512 if small else 1024)
    made = time.perf_counter() - t0
    cap = min(options.mosaic_rss_cap_mib, _available_mib() - 1024)
    out = run_mosaic_child(bench.model_dir, image, bench.workdir / "mosaic.json",
                           backend=engine.backend, precision=bench.precision,
                           batch_size=engine.batch_size, rss_cap_mib=cap,
                           timeout_seconds=options.mosaic_timeout_seconds
                           or plan.timeout_seconds)
    out.update({"image": str(image), "size_px": plan.mosaic_px, "cached": cached,
                "generate_seconds": made, "rss_cap_mib": cap,
                "file_mib": image.stat().st_size / 2**20})
    return out


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
