"""The ``marginwatch`` command line.

The root app, with the engine, daemon and tool commands; the record-keeping groups
(``db``, ``audit``, ``case``, ``truth``, ``monitor``) are in ``_record_commands.py``, and
what both share (exit codes, ``fail``, ``guarded``, options) in ``_cli_common.py``.
Together they are the one place that reaches every part of the product. Each command imports
its implementation lazily inside the function body, so that ``marginwatch audit``
starts without loading torch. Errors from the :class:`MarginwatchError` family become
one line on stderr and a non-zero exit code; nothing else is caught, so a real bug
still shows its traceback.

Exit codes: 0 success, 1 a check failed (for example ``audit verify``), 2 bad input
or configuration, 130 interrupted.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated

import typer

from ._cli_common import ConfigOption, DbOption, guarded
from ._record_commands import register as register_record_commands

__all__ = ["app", "main"]

app = typer.Typer(
    name="marginwatch",
    help=(
        "Research software (not a medical device): CNN assessment of surgical margins on "
        "fluorescence confocal microscopy images of radical-prostatectomy specimens."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version() -> str:
    try:
        return version("marginwatch")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"marginwatch {_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    _version_flag: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version_callback,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Research software (not a medical device)."""


# --- engine commands (predict) ---------------------------------------------------


@app.command("predict")
def predict_command(
    images: Annotated[list[Path], typer.Argument(help="Image files (TIFF, PNG, JPEG, BMP).",
                                                 show_default=False,
                                                 readable=False)],  # predict says which
    model: Annotated[
        Path | None,
        typer.Option("--model", help="Model folder (default: daemon.model_dir, else models/demo).",
                     show_default=False),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per image.")] = False,
    cam: Annotated[
        Path | None,
        typer.Option("--cam", help="Write a Grad-CAM overlay PNG here (-N suffix per image).",
                     show_default=False),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option("--backend", help="auto | torch-cpu | torch-cuda | tensorrt.",
                     show_default=False),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Assess images with the CNN (research use, not a diagnosis)."""
    from marginwatch.daemon.prediction import run_predict

    code = guarded(run_predict, images, model_dir=model, as_json=as_json, cam=cam,
                   config_path=config, backend_name=backend)
    raise typer.Exit(code)

# --- record-keeping commands (db, audit, case, truth, monitor): _record_commands.py

register_record_commands(app)


# --- daemon commands (run) -------------------------------------------------------


@app.command("run")
def run_command(
    watch: Annotated[
        Path | None,
        typer.Option("--watch", help="The scanner's export folder (default: daemon.watch_dir).",
                     show_default=False),
    ] = None,
    config: ConfigOption = None,
    db: DbOption = None,
    model: Annotated[
        Path | None,
        typer.Option("--model", help="Model folder (default: daemon.model_dir).",
                     show_default=False),
    ] = None,
) -> None:
    """Watch the export folder and assess every new image once (foreground; systemd runs it)."""
    from marginwatch.daemon.service import run_daemon

    code = guarded(run_daemon, watch=watch, config_path=config, db=db, model_dir=model)
    raise typer.Exit(code)


# --- console commands (dashboard, ack, demo) -------------------------------------


@app.command("dashboard")
def dashboard_command(
    db: DbOption = None,
    config: ConfigOption = None,
    once: Annotated[
        bool, typer.Option("--once", help="Print one frame to stdout and exit.")
    ] = False,
    width: Annotated[
        int | None,
        typer.Option("--width", min=40, help="Columns (default: the terminal's).",
                     show_default=False),
    ] = None,
    height: Annotated[
        int | None,
        typer.Option("--height", min=12, help="Rows (default: the terminal's).",
                     show_default=False),
    ] = None,
) -> None:
    """The theatre console: live alerts, Grad-CAM, recent results (reads the database only)."""
    from marginwatch.daemon.dashboard import run_dashboard

    raise typer.Exit(guarded(run_dashboard, db=db, config_path=config, once=once, width=width,
                             height=height))


@app.command("ack")
def ack_command(
    alert_id: Annotated[
        int, typer.Argument(metavar="ALERT_ID", help="The alert's number (#N on the dashboard).")
    ],
    by: Annotated[
        str, typer.Option("--by", help="Who acknowledges it (recorded in the audit log).")
    ],
    note: Annotated[
        str | None, typer.Option("--note", help="Optional note.", show_default=False)
    ] = None,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Acknowledge an alert: records who and when (audited); it leaves the red list."""
    from marginwatch.daemon.ack import run_ack

    raise typer.Exit(guarded(run_ack, alert_id, by=by, note=note, db=db, config_path=config,
                             echo=typer.echo))


@app.command("demo")
def demo_command(
    duration: Annotated[
        float | None,
        typer.Option("--duration", min=1, show_default=False,
                     help="Stop after this many seconds and print a summary "
                          "(default: run until Ctrl-C)."),
    ] = None,
    interval: Annotated[
        float, typer.Option("--interval", min=0.2, help="Seconds between simulated scans.")
    ] = 3.0,
    root: Annotated[Path | None, typer.Option("--root", hidden=True)] = None,
) -> None:
    """Run the whole system on synthetic scans: daemon, simulated scanner, dashboard."""
    from marginwatch.daemon.demo import run_demo

    raise typer.Exit(guarded(run_demo, duration_seconds=duration, root=root,
                             interval_seconds=interval, echo=typer.echo))

# --- tools commands (synth, train, evaluate, export, bench) ----------------------


@app.command("bench")
def bench_command(
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    quick: Annotated[bool, typer.Option(
        "--quick", help="Reduced run of all five sections (~1 min on 2 idle CPU cores).")] = False,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Write the report as JSON here.", show_default=False)] = None,
    model: Annotated[Path | None, typer.Option(
        "--model", help="Model folder (default: models/demo, else a random model of its "
        "architecture).", show_default=False)] = None,
    precision: Annotated[str | None, typer.Option(
        "--precision", help="fp16 | fp32 (default: fp16 on cuda).", show_default=False)] = None,
    channels_last: Annotated[bool | None, typer.Option(
        "--channels-last/--no-channels-last", help="Forward section memory format "
        "(default: on for cuda).", show_default=False)] = None,
    compile_: Annotated[bool, typer.Option(
        "--compile", help="Forward section: torch.compile.")] = False,
    cuda_graphs: Annotated[bool, typer.Option(
        "--cuda-graphs", help="Forward section: CUDA graphs.")] = False,
    sweep: Annotated[bool, typer.Option(
        "--sweep", help="Forward section: measure every variant.")] = False,
    sections: Annotated[str | None, typer.Option(
        "--sections", help="Comma list of forward,assess,daemon,gradcam,mosaic.",
        show_default=False)] = None,
    files: Annotated[int | None, typer.Option(
        "--files", min=1, help="Daemon latency series length.", show_default=False)] = None,
    burst: Annotated[int | None, typer.Option(
        "--burst", min=1, help="Daemon burst length (default: as --files).",
        show_default=False)] = None,
    mosaic_px: Annotated[int | None, typer.Option(
        "--mosaic-px", min=512, help="Mosaic side in pixels.", show_default=False)] = None,
    region_px: Annotated[int | None, typer.Option(
        "--region-px", min=128, max=8192, help="Side of the timed scans in pixels (default: "
        "one model field; 1024 is the demo scanner's scan).", show_default=False)] = None,
    mosaic_timeout: Annotated[float | None, typer.Option(
        "--mosaic-timeout", min=1, help="Stop the mosaic after this many seconds; report "
        "its rate so far.", show_default=False)] = None,
    settle: Annotated[float | None, typer.Option(
        "--settle-seconds", min=0,
        help="Daemon settle_seconds (default: the shipped default).")] = None,
    threads: Annotated[int | None, typer.Option(
        "--threads", min=1, help="torch intra-op threads, here and in the daemon/mosaic "
        "subprocesses (default: torch's).", show_default=False)] = None,
) -> None:
    """Measure latency, throughput, Grad-CAM cost and mosaic memory on synthetic images."""
    from marginwatch.tools.bench import SECTIONS, BenchOptions, run_bench

    options = BenchOptions(
        device=device, quick=quick, json_out=json_out, model_dir=model, precision=precision,
        channels_last=channels_last, compile=compile_, cuda_graphs=cuda_graphs, sweep=sweep,
        sections=tuple(s.strip() for s in sections.split(",")) if sections else SECTIONS,
        daemon_files=files, burst_files=burst, mosaic_px=mosaic_px, region_px=region_px,
        mosaic_timeout_seconds=mosaic_timeout, settle_seconds=settle, threads=threads,
    )
    guarded(run_bench, options)


@app.command("export")
def export_command(
    model: Annotated[Path, typer.Argument(help="Model folder (model.json + weights.safetensors).",
                                          show_default=False)],
    onnx: Annotated[
        Path | None,
        typer.Option("--onnx", help="Write the ONNX file here (outputs logits, features; "
                     "dynamic batch).", show_default=False),
    ] = None,
    tensorrt: Annotated[
        bool, typer.Option("--tensorrt", help="Build the TensorRT engine into the engine cache.")
    ] = False,
    precision: Annotated[
        str | None, typer.Option("--precision", help="fp16 | fp32 (default: engine.precision).",
                                 show_default=False)
    ] = None,
    max_batch: Annotated[
        int | None, typer.Option("--max-batch", help="Largest batch the engine accepts "
                                 "(default: engine.tensorrt_max_batch).", show_default=False)
    ] = None,
    cache_dir: Annotated[
        Path | None, typer.Option("--cache-dir", help="Engine cache folder (default: "
                                  "engine.engine_cache_dir, else the user cache).",
                                  show_default=False)
    ] = None,
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="Build even when a matching engine is cached.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Export a model to ONNX and/or build its TensorRT engine for this GPU."""
    from marginwatch.tools.export import run_export

    raise typer.Exit(guarded(run_export, model, onnx_out=onnx, tensorrt=tensorrt,
                             precision=precision, max_batch=max_batch, cache_dir=cache_dir,
                             rebuild=rebuild, config_path=config, echo=typer.echo))


@app.command()
def synth(
    out: Annotated[
        Path, typer.Argument(help="Folder to write OUT/<case>/<name>.tif and OUT/manifest.csv.")
    ],
    images: Annotated[
        int | None, typer.Option(help="Number of images (default: 275, external 46).")
    ] = None,
    tumour_fraction: Annotated[
        float | None, typer.Option(help="Share labelled tumour (default: 37/275, external 0.5).")
    ] = None,
    patients: Annotated[
        int | None, typer.Option(help="Number of patients (default: 24, external 10).")
    ] = None,
    focal_fraction: Annotated[
        float, typer.Option(help="Share of tumour images with only a small focus at the ink.")
    ] = 0.4,
    inside_fraction: Annotated[
        float,
        typer.Option(help="Share of benign images with tumour away from the ink (hard negatives)."),
    ] = 0.06,
    centre: Annotated[
        str, typer.Option(help="development | external (other stain, noise, pixel size).")
    ] = "development",
    profile: Annotated[str, typer.Option(help="grey | reflectance+fluorescence | rgb")] = "grey",
    mosaic: Annotated[bool, typer.Option(help="Large tiled pyramidal TIFFs.")] = False,
    seed: Annotated[int, typer.Option(help="Same seed, same bytes.")] = 0,
    size_px: Annotated[
        int | None, typer.Option(help="Image side in pixels (default 1024; mosaic 4096).")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Processes (default: min(4, CPUs)).")] = None,
    force: Annotated[
        bool, typer.Option(help="Write into a folder that already has a manifest.")
    ] = False,
    degrade: Annotated[
        str | None,
        typer.Option(
            help="blur | saturate | faint | bubbles | partial | seams: scans the quality gate "
            "must stop."
        ),
    ] = None,
    strength: Annotated[float, typer.Option(help="Degradation strength in (0, 1].")] = 1.0,
) -> None:
    """Write a synthetic FCM export (research use: synthetic data) and its manifest."""
    from marginwatch.tools.synth_cli import run_synth

    guarded(run_synth, out, images=images, tumour_fraction=tumour_fraction, patients=patients,
            focal_fraction=focal_fraction, inside_fraction=inside_fraction, centre=centre,
            profile=profile, mosaic=mosaic, seed=seed, size_px=size_px, workers=workers,
            force=force, degrade=degrade, strength=strength)


@app.command()
def train(
    manifest: Annotated[Path, typer.Argument(help="CSV: path,label,patient_id,centre.")],
    out: Annotated[Path, typer.Option("--out", help="Model folder to write.")],
    preset: Annotated[str, typer.Option(
        help="paper (the study's recipe, for a site's own data) | demo (the CPU recipe of "
        "the synthetic demo model; docs/training.md). Options given explicitly win.")] = "paper",
    arch: Annotated[str | None, typer.Option(help="Backbone [paper: mobilenet_v3_small].")] = None,
    input_size: Annotated[int | None, typer.Option(help="Model input side, px [896].")] = None,
    um_per_px: Annotated[float | None, typer.Option(help="Model pixel size, um [1.0].")] = None,
    profile: Annotated[str | None, typer.Option(
        help="grey | reflectance+fluorescence | rgb [grey]")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs [30].")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per step [8].")] = None,
    lr: Annotated[float | None, typer.Option(help="AdamW peak learning rate [1e-3].")] = None,
    patience: Annotated[int | None, typer.Option(help="Epochs without val AUC gain [8].")] = None,
    val_fraction: Annotated[float | None, typer.Option(help="Validation share [0.15].")] = None,
    test_fraction: Annotated[float | None, typer.Option(help="Internal test share [0.21].")] = None,
    target_sensitivity: Annotated[float | None, typer.Option(
        help="Chooses the threshold [0.90].")] = None,
    target_specificity: Annotated[float | None, typer.Option(
        help="With it, the threshold is midway between both targets [none].")] = None,
    tile_selection: Annotated[str | None, typer.Option(
        help="random | top (multiple-instance: train on each image's top tile) [random].")] = None,
    seed: Annotated[int, typer.Option(help="Seed of split, init, sampling, augmentation.")] = 0,
    device: Annotated[str, typer.Option(help="cpu | cuda")] = "cpu",
    pretrained: Annotated[Path | None, typer.Option(help="Local safetensors.")] = None,
    max_train_images: Annotated[int | None, typer.Option(help="Subsample train.")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="Time budget of the epochs.")] = None,
    augment: Annotated[bool, typer.Option(help="Flips, rotations, jitter.")] = True,
    synthetic_demo: Annotated[bool | None, typer.Option(
        "--synthetic-demo/--no-synthetic-demo", help="Card: synthetic_demo.",
        show_default=False)] = None,
    resume: Annotated[bool, typer.Option(help="Continue --out.")] = False,
    config: ConfigOption = None,
) -> None:
    """Train a margin model (focal loss, label smoothing, weighted sampling; research use)."""
    from marginwatch.engine.config import load_config
    from marginwatch.tools import preflight, preset_options

    def _run() -> None:
        options = preset_options(
            preset, architecture=arch, input_size_px=input_size, um_per_px=um_per_px,
            profile=profile, epochs=epochs, batch_size=batch_size, lr=lr, patience=patience,
            val_fraction=val_fraction, test_fraction=test_fraction,
            target_sensitivity=target_sensitivity, target_specificity=target_specificity,
            tile_selection=tile_selection, seed=seed,
            device=device, pretrained=str(pretrained) if pretrained else None,
            max_train_images=max_train_images, max_minutes=max_minutes, augment=augment,
            synthetic_demo=synthetic_demo,
        )
        cfg = load_config(config)
        preflight(manifest, options)  # bad input fails here, before torch is imported
        from marginwatch.tools.train import train as run_train

        run_train(manifest, out, options, resume=resume, config=cfg)

    guarded(_run)


@app.command()
def evaluate(
    model: Annotated[Path, typer.Argument(help="Model folder (model.json + weights.safetensors).")],
    manifest: Annotated[Path, typer.Argument(help="Internal test manifest (CSV).")],
    report: Annotated[Path, typer.Option("--report", help="Report folder.")],
    external: Annotated[Path | None, typer.Option(help="External-centre manifest (CSV).")] = None,
    resamples: Annotated[int, typer.Option(help="Patient-level bootstrap resamples.")] = 2000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    backend: Annotated[str | None, typer.Option(help="auto|torch-cpu|torch-cuda|tensorrt")] = None,
    config: ConfigOption = None,
) -> None:
    """Sensitivity, specificity, PPV, NPV, AUC, Brier, ECE with patient-level 95 % CIs."""
    from marginwatch.engine.config import load_config
    from marginwatch.tools.evaluate import evaluate as run_evaluate

    def _run() -> None:
        cfg = load_config(config, overrides={"engine": {"backend": backend}})
        run_evaluate(model, manifest, report, external=external, config=cfg,
                     resamples=resamples, seed=seed)

    guarded(_run)


@app.command("quality-thresholds")
def quality_thresholds_command(
    model: Annotated[Path, typer.Argument(help="Model folder made by marginwatch train.")],
    manifest: Annotated[Path, typer.Argument(help="The manifest it was trained on (CSV).")],
) -> None:
    """Re-derive a trained model's quality-gate thresholds from its training images."""
    from marginwatch.tools import rederive

    old, new = guarded(rederive, model, manifest)
    fields = [f for f in type(new).model_fields if f != "derived_from"]
    for field in fields:
        before = None if old is None else getattr(old, field)
        typer.echo(f"{field:24} {before!s:>10} -> {getattr(new, field)!s:>10}")
    typer.echo(f"derived from {new.derived_from}")
    typer.echo(f"model card rewritten: {model} (the model's digest changed; weights unchanged)")


# --- deployment commands (install-systemd) ---------------------------------------


@app.command("install-systemd")
def install_systemd_command(
    export_dir: Annotated[
        str | None,
        typer.Option(
            "--export-dir",
            help="The scanner's export folder (required on the first install).",
            show_default=False,
        ),
    ] = None,
    prefix: Annotated[
        str, typer.Option("--prefix", help="Install prefix; the venv is PREFIX/venv.")
    ] = "/opt/marginwatch",
    db_url: Annotated[
        str | None,
        typer.Option(
            "--db-url",
            help="Database URL for a new configuration; PostgreSQL over TCP also lets the "
            "services reach the network. Default: SQLite in /var/lib/marginwatch.",
            show_default=False,
        ),
    ] = None,
    console: Annotated[
        str,
        typer.Option("--console", help="Virtual terminal for the theatre dashboard, or 'none'."),
    ] = "tty1",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print every step; change nothing.")
    ] = False,
    root: Annotated[Path | None, typer.Option("--root", hidden=True)] = None,
) -> None:
    """Install the daemon and the theatre console as hardened systemd services."""
    from marginwatch.daemon.install import InstallOptions, install_systemd

    options = InstallOptions(
        export_dir=export_dir, prefix=prefix, db_url=db_url, console=console,
        dry_run=dry_run, root=root,
    )
    guarded(install_systemd, options, echo=typer.echo)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``marginwatch`` console script."""
    app(args=argv if argv is not None else sys.argv[1:], prog_name="marginwatch")
