"""The record-keeping command groups: ``db``, ``audit``, ``case``, ``truth``, ``monitor``.

Each reads or writes the database only (none loads torch); the implementations live in
the ``_db_cli``, ``_audit_cli``, ``_case_cli``, ``_truth_cli`` and ``_monitor_cli``
modules and are imported inside each command. :func:`register` adds the groups to the
root app (daemon/cli.py), in the order ``--help`` lists them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._cli_common import ConfigOption, DbOption, guarded

__all__ = ["register"]


# --- storage commands (db, audit) ------------------------------------------------

db_app = typer.Typer(help="Database schema: create and migrate.", no_args_is_help=True)
audit_app = typer.Typer(
    help="Auditor commands: read-only queries and the audit-chain check.", no_args_is_help=True
)


@db_app.command("upgrade")
def db_upgrade_command(db: DbOption = None, config: ConfigOption = None) -> None:
    """Create the database or migrate it to this version's schema."""
    from marginwatch.daemon._db_cli import db_upgrade

    guarded(db_upgrade, db, config)


@db_app.command("current")
def db_current_command(db: DbOption = None, config: ConfigOption = None) -> None:
    """Print the schema revision (exit 1 when it is not this version's head)."""
    from marginwatch.daemon._db_cli import db_current

    raise typer.Exit(guarded(db_current, db, config))


@audit_app.command("list")
def audit_list_command(
    db: DbOption = None,
    config: ConfigOption = None,
    since: Annotated[
        str | None, typer.Option(help="first seen at/after: ISO date/time (UTC) or 24h, 7d")
    ] = None,
    until: Annotated[str | None, typer.Option(help="first seen before: as --since")] = None,
    decision: Annotated[str | None, typer.Option(help="positive or negative")] = None,
    kind: Annotated[
        str | None, typer.Option(help="alert kind: tumour-at-margin or not-assessed")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json")] = "table",
) -> None:
    """One row per image with its final state."""
    from marginwatch.daemon._audit_cli import audit_list

    guarded(audit_list, db, config, since, until, decision, kind, fmt)


@audit_app.command("show")
def audit_show_command(
    image_id: Annotated[str, typer.Argument(help="image id (or a unique prefix)")],
    db: DbOption = None,
    config: ConfigOption = None,
    cam: Annotated[Path | None, typer.Option(help="write the heatmap overlay PNG here")] = None,
    fmt: Annotated[str, typer.Option("--format", help="text or json")] = "text",
) -> None:
    """Everything recorded about one image: file, hashes, model, result, alerts, events."""
    from marginwatch.daemon._audit_cli import audit_show

    guarded(audit_show, db, config, image_id, cam, fmt)


@audit_app.command("export")
def audit_export_command(
    out: Annotated[Path, typer.Argument(help="output file ('-' for stdout)")],
    fmt: Annotated[str, typer.Option("--format", help="csv or json")] = "json",
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Export every image (csv) or images, events and the chain check (json)."""
    from marginwatch.daemon._audit_cli import audit_export

    guarded(audit_export, db, config, fmt, out)


@audit_app.command("verify")
def audit_verify_command(
    db: DbOption = None,
    config: ConfigOption = None,
    anchor: Annotated[
        Path | None,
        typer.Option(help="chain-head file: checked when present, then written/advanced"),
    ] = None,
) -> None:
    """Walk the audit hash chain: exit 0 intact, 1 naming the first bad event."""
    from marginwatch.daemon._audit_cli import audit_verify

    raise typer.Exit(guarded(audit_verify, db, config, anchor))


# --- case commands (list, show, close, report) ----------------------------------

case_app = typer.Typer(
    help="Cases (one per specimen folder) and their margin locations.", no_args_is_help=True
)
CaseArgument = Annotated[
    str, typer.Argument(metavar="CASE", help="Case id (or a unique prefix) or folder name.")
]
CaseJson = Annotated[bool, typer.Option("--json", help="JSON instead of text.")]


@case_app.command("list")
def case_list_command(
    open_only: Annotated[bool, typer.Option("--open", help="Only cases still open.")] = False,
    since: Annotated[
        str | None, typer.Option(help="with an image at/after: ISO date/time (UTC) or 24h, 7d")
    ] = None,
    as_json: CaseJson = False,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Cases with their status (worst location) and counts, latest first (read-only)."""
    from marginwatch.daemon._case_cli import case_list

    guarded(case_list, db, config, open_only, since, as_json)


@case_app.command("show")
def case_show_command(
    case: CaseArgument, as_json: CaseJson = False, db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """One case: status per location, its images and its audit events (read-only)."""
    from marginwatch.daemon._case_cli import case_show

    guarded(case_show, db, config, case, as_json)


@case_app.command("close")
def case_close_command(
    case: CaseArgument,
    by: Annotated[str, typer.Option("--by", help="Who closes it (recorded in the audit log).")],
    note: Annotated[
        str | None, typer.Option("--note", help="Optional note.", show_default=False)
    ] = None,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Close a case (audited); a later image reopens it, visibly and audited."""
    from marginwatch.daemon._case_cli import case_close

    guarded(case_close, db, config, case, by, note, echo=typer.echo)


@case_app.command("report")
def case_report_command(
    case: CaseArgument,
    out: Annotated[Path, typer.Option("--out", help="Folder to write the HTML report into.")],
    pdf: Annotated[bool, typer.Option("--pdf", help="Also write it as a PDF (matplotlib).")]
    = False,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """One self-contained HTML file for the pathology record (research use; read-only)."""
    from marginwatch.daemon._case_cli import case_report

    guarded(case_report, db, config, case, out, echo=typer.echo, pdf=pdf)


# --- ground truth and monitoring (truth import, monitor) -------------------------

truth_app = typer.Typer(help="Ground truth: final histopathology per image.",
                        no_args_is_help=True)
monitor_app = typer.Typer(help="Live performance against ground truth, drift and alarms "
                          "(reads the database only, unless --raise-alarms).",
                          invoke_without_command=True)


@truth_app.command("import")
def truth_import_command(
    file: Annotated[Path, typer.Argument(help="CSV: path|sha256|image, status|label, "
                                         "[reported_by, report_date, note].")],
    by: Annotated[str, typer.Option("--by", help="Who imports it (recorded in the audit log).")],
    skip_bad: Annotated[bool, typer.Option(
        "--skip-bad", help="Write the good rows and report the bad ones.")] = False,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Import histopathology margin status (audited; a changed label is a correction)."""
    from marginwatch.daemon._truth_cli import truth_import

    raise typer.Exit(guarded(truth_import, file, by=by, skip_bad=skip_bad, db=db,
                             config_path=config, echo=typer.echo,
                             err=lambda line: typer.echo(line, err=True)))


@monitor_app.callback()
def monitor_command(
    ctx: typer.Context,
    since: Annotated[str | None, typer.Option(
        help="predictions at/after: ISO date/time (UTC) or 24h, 7d")] = None,
    until: Annotated[str | None, typer.Option(help="predictions before: as --since")] = None,
    report: Annotated[Path | None, typer.Option(
        "--report", help="Write monitor.json and the PNG figures into this folder.",
        show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    per_cases: Annotated[int | None, typer.Option(
        "--per-cases", min=1, help="Trend per N cases (default: per month).",
        show_default=False)] = None,
    raise_alarms: Annotated[bool, typer.Option(
        "--raise-alarms", help="Record alarm conditions as alarms (opens the database "
        "read-write; audited).")] = False,
    resamples: Annotated[int, typer.Option(
        "--resamples", min=100, help="Case-level bootstrap resamples.")] = 2000,
    target_sensitivity: Annotated[float | None, typer.Option(
        "--target-sensitivity", min=0.01, max=1.0, help="Sensitivity alarm target (default: "
        "the model card's, else 0.90).", show_default=False)] = None,
    calibration_margin: Annotated[float, typer.Option(
        "--calibration-margin", min=0.0, help="Brier/ECE worse than the card's by more "
        "than this (CI lower bound) raises the calibration alarm.")] = 0.05,
    drift_p_value: Annotated[float, typer.Option(
        "--drift-p-value", min=1e-12, max=0.5, help="Input-drift alarm below this "
        "Bonferroni-adjusted KS p-value.")] = 0.001,
    drift_window: Annotated[int, typer.Option(
        "--drift-window", min=2, help="Most recent images tested for input drift.")] = 200,
    drift_min_images: Annotated[int, typer.Option(
        "--drift-min-images", min=2, help="Fewer images: no drift test.")] = 30,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Sensitivity, specificity, PPV, NPV, AUC, Brier (case-level CIs), drift, alarms."""
    if ctx.invoked_subcommand is not None:
        return
    from marginwatch.daemon._monitor_cli import run_monitor
    from marginwatch.tools.monitoring import MonitorSettings

    settings = MonitorSettings(
        target_sensitivity=target_sensitivity, calibration_margin=calibration_margin,
        drift_p_value=drift_p_value, drift_window=drift_window,
        drift_min_images=drift_min_images, resamples=resamples,
    )
    raise typer.Exit(guarded(run_monitor, db=db, config_path=config, since=since, until=until,
                             report=report, as_json=as_json, per_cases=per_cases,
                             raise_alarms=raise_alarms, settings=settings, echo=typer.echo))


@monitor_app.command("ack")
def monitor_ack_command(
    alarm_id: Annotated[int, typer.Argument(metavar="ALARM_ID", help="The alarm's number.")],
    by: Annotated[str, typer.Option("--by", help="Who acknowledges it (audited).")],
    note: Annotated[str | None, typer.Option("--note", show_default=False)] = None,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Acknowledge a monitoring alarm: it leaves the dashboard header (audited)."""
    from marginwatch.daemon._monitor_cli import run_monitor_ack

    raise typer.Exit(guarded(run_monitor_ack, alarm_id, by=by, note=note, db=db,
                             config_path=config, echo=typer.echo))


def register(app: typer.Typer) -> None:
    """Add the record-keeping groups to ``app``."""
    app.add_typer(db_app, name="db")
    app.add_typer(audit_app, name="audit")
    app.add_typer(case_app, name="case")
    app.add_typer(truth_app, name="truth")
    app.add_typer(monitor_app, name="monitor")
