"""``marginwatch install-systemd``: install the daemon and the theatre console as services.

What it does, each step only when needed (a second run changes nothing and says so):

1. the system user and group ``marginwatch`` (no login, home /var/lib/marginwatch);
2. the install prefix (default /opt/marginwatch) and its virtual environment ``venv``;
3. /etc/marginwatch/marginwatch.toml from ``systemd/marginwatch.toml.in``: every setting
   commented with its default (an existing file is kept as it is);
4. the units in /etc/systemd/system, and their site drop-ins: ``export-dir.conf`` (the
   export folder, named once: the daemon's watch_dir and read-only for the service),
   ``network.conf`` (PostgreSQL over TCP only), ``prefix.conf`` (a non-default prefix);
5. ``systemctl daemon-reload`` (when a unit changed), ``enable`` marginwatch.service and
   the console on its tty, ``mask`` the login prompt on that tty.

``--dry-run`` prints the same steps and changes nothing. ``--root DIR`` (hidden, for
tests and image builds) writes the files under DIR and prints the commands it skips.
Nothing is started: the daemon needs the model and the venv's packages first.
"""

from __future__ import annotations

import grp
import importlib.util
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from string import Template
from urllib.parse import parse_qs, urlsplit

import tomli_w
from marginwatch.engine.errors import DeploymentError

__all__ = ["DEFAULT_PREFIX", "InstallOptions", "install_systemd", "units_source_dir"]

DEFAULT_PREFIX = PurePosixPath("/opt/marginwatch")
SERVICE_USER = "marginwatch"
STATE_DIR = PurePosixPath("/var/lib/marginwatch")
CONFIG_DIR = PurePosixPath("/etc/marginwatch")
CONFIG_FILE = CONFIG_DIR / "marginwatch.toml"
UNIT_DIR = PurePosixPath("/etc/systemd/system")
DAEMON_UNIT = "marginwatch.service"
CONSOLE_TEMPLATE = "marginwatch-dashboard@.service"
_PROTECTED_HOMES = ("/home", "/root", "/run/user")
_UNSAFE_PATH_CHARS = set(" \t\n\"'\\%$;")

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]


@dataclass(frozen=True)
class InstallOptions:
    """What to install. ``root`` is the hidden test/image-build root (None: the system)."""

    export_dir: str | None = None
    prefix: str = str(DEFAULT_PREFIX)
    db_url: str | None = None
    console: str | None = "tty1"
    dry_run: bool = False
    root: Path | None = None


@dataclass
class _Report:
    echo: Callable[[str], None]
    dry_run: bool
    changed: list[str] = field(default_factory=list)

    def unchanged(self, what: str) -> None:
        self.echo(f"  ok       {what}")

    def change(self, what: str) -> bool:
        """Record a change; returns True when it should really be made."""
        self.changed.append(what)
        self.echo(f"  {'would' if self.dry_run else 'change':<8} {what}")
        return not self.dry_run

    def skipped(self, what: str) -> None:
        self.echo(f"  skip     {what}")


def units_source_dir() -> Path:
    """The unit files: the installed ``marginwatch.systemd`` data, else the source tree's."""
    here = Path(__file__).resolve().parent
    candidates = [here.parent / "systemd", here / "systemd"]
    spec = importlib.util.find_spec("marginwatch.systemd")
    if spec is not None and spec.submodule_search_locations:
        candidates[:0] = [Path(location) for location in spec.submodule_search_locations]
    for candidate in candidates:
        if (candidate / DAEMON_UNIT).is_file():
            return candidate
    raise DeploymentError(
        f"cannot find the unit files: expected {here.parent / 'systemd' / DAEMON_UNIT}; "
        "reinstall marginwatch (the wheel ships them as marginwatch.systemd)"
    )


def install_systemd(
    options: InstallOptions,
    *,
    echo: Callable[[str], None] = print,
    runner: Runner | None = None,
    geteuid: Callable[[], int] = os.geteuid,
    which: Callable[[str], str | None] = shutil.which,
    environ: Mapping[str, str] | None = None,
) -> list[str]:
    """Install (or, with ``dry_run``, describe) the services; returns the changes made."""
    installer = _Installer(options, echo=echo, run=runner or _run)
    _preflight(options, installer.root, geteuid=geteuid, which=which, echo=echo)
    if installer.export_dir is None and not installer.at(EXPORT_CONF).exists():
        raise DeploymentError(
            "--export-dir is required on the first install: the scanner's export folder, "
            "e.g. --export-dir /srv/scanner-export"
        )
    mode = "dry run: nothing will be changed" if options.dry_run else "installing"
    root = installer.root
    echo(f"marginwatch install-systemd ({mode}){f' under {root}' if root else ''}")
    installer.service_user()  # 1.
    venv = installer.prefix_and_venv()  # 2.
    db_url = installer.configuration()  # 3.
    units_changed = installer.units_and_dropins(db_url)  # 4.
    installer.systemd(units_changed)  # 5.
    installer.summary(venv)
    return installer.report.changed


DAEMON_DROPINS = UNIT_DIR / f"{DAEMON_UNIT}.d"
EXPORT_CONF = DAEMON_DROPINS / "export-dir.conf"


class _Installer:
    """The steps of :func:`install_systemd`, each making only the changes still needed."""

    def __init__(self, options: InstallOptions, *, echo: Callable[[str], None],
                 run: Runner) -> None:
        self.options = options
        self.echo = echo
        self.run = run
        self.source = units_source_dir()
        self.prefix = _absolute(options.prefix, "--prefix")
        self.export_dir = (
            _absolute(options.export_dir, "--export-dir") if options.export_dir else None
        )
        self.console = _console_tty(options.console)
        self.root = Path(options.root) if options.root is not None else None
        self.report = _Report(echo=echo, dry_run=options.dry_run)

    def at(self, path: PurePosixPath) -> Path:
        """Where ``path`` is on this machine (under ``--root`` when given)."""
        return Path(self.root, *path.parts[1:]) if self.root is not None else Path(path)

    def system(self, argv: list[str], what: str) -> None:
        """Run a system command (or say it would be / is skipped)."""
        if self.root is not None:
            self.report.skipped(f"{what} (--root: not running `{' '.join(argv)}`)")
            return
        if self.report.change(f"{what}: {' '.join(argv)}"):
            result = self.run(argv)
            if result.returncode != 0:
                raise DeploymentError(
                    f"`{' '.join(argv)}` failed with exit code {result.returncode}: "
                    f"{(result.stderr or result.stdout).strip()}"
                )

    def service_user(self) -> None:
        if self.root is None and _user_exists(SERVICE_USER):
            self.report.unchanged(f"system user {SERVICE_USER}")
            return
        self.system(
            ["useradd", "--system", "--user-group", "--home-dir", str(STATE_DIR),
             "--no-create-home", "--shell", "/usr/sbin/nologin", "--comment",
             "marginwatch daemon", SERVICE_USER],
            f"create system user {SERVICE_USER}",
        )

    def prefix_and_venv(self) -> PurePosixPath:
        _ensure_dir(self.at(self.prefix), 0o755, self.report, shown=self.prefix)
        venv = self.prefix / "venv"
        if (self.at(venv) / "bin" / "python").exists():
            self.report.unchanged(f"virtual environment {venv}")
        else:
            self.system([sys.executable, "-m", "venv", str(venv)],
                        f"create virtual environment {venv}")
        return venv

    def configuration(self) -> str | None:
        """Write the configuration unless there is one; returns the db_url in effect."""
        _ensure_dir(self.at(CONFIG_DIR), 0o750, self.report, group=SERVICE_USER,
                    root=self.root, shown=CONFIG_DIR)
        config_path = self.at(CONFIG_FILE)
        if not config_path.exists():
            _ensure_file(config_path, _config_text(self.source, self.options.db_url), 0o640,
                         self.report, group=SERVICE_USER, root=self.root, shown=CONFIG_FILE)
            return self.options.db_url
        self.report.unchanged(f"{CONFIG_FILE} (kept as it is)")
        existing = _configured_db_url(config_path)
        if self.options.db_url and existing != self.options.db_url:
            self.echo(
                f"  note     {CONFIG_FILE} sets db_url differently from --db-url; "
                "edit the file to change it"
            )
        return existing

    def units_and_dropins(self, db_url: str | None) -> bool:
        """Install the units and their drop-ins; True when any of them changed."""
        before = len(self.report.changed)
        _ensure_dir(self.at(UNIT_DIR), 0o755, self.report, shown=UNIT_DIR)
        unit_names = [DAEMON_UNIT] + ([CONSOLE_TEMPLATE] if self.console else [])
        for unit in unit_names:
            _ensure_file(self.at(UNIT_DIR / unit), (self.source / unit).read_text(), 0o644,
                         self.report, shown=UNIT_DIR / unit)
        if self.export_dir is not None:
            _ensure_dir(self.at(DAEMON_DROPINS), 0o755, self.report, shown=DAEMON_DROPINS)
            _ensure_file(self.at(EXPORT_CONF), _export_dir_text(self.source, self.export_dir),
                         0o644, self.report, shown=EXPORT_CONF)
        else:
            self.report.unchanged(f"{EXPORT_CONF} (export folder kept)")
        network_text = (self.source / "network.conf.example").read_text()
        network = network_text if _needs_network(db_url) else None
        for unit in unit_names:
            dropins = UNIT_DIR / f"{unit}.d"
            _ensure_optional(self.at(dropins / "network.conf"), network, self.report,
                             shown=dropins / "network.conf")
            prefix_text = _prefix_text(unit, self.prefix) if self.prefix != DEFAULT_PREFIX else None
            _ensure_optional(self.at(dropins / "prefix.conf"), prefix_text, self.report,
                             shown=dropins / "prefix.conf")
        return len(self.report.changed) > before

    def systemd(self, units_changed: bool) -> None:
        """daemon-reload when needed, enable the units, mask the console's login prompt."""
        if units_changed:
            self.system(["systemctl", "daemon-reload"], "reload systemd")
        else:
            self.report.unchanged("systemd units (no reload needed)")
        enable = [DAEMON_UNIT]
        if self.console:
            enable.append(f"marginwatch-dashboard@{self.console}.service")
        for unit in enable:
            if self.root is None and _systemctl_state(self.run, "is-enabled", unit) == "enabled":
                self.report.unchanged(f"{unit} enabled")
            else:
                self.system(["systemctl", "enable", unit], f"enable {unit}")
        if self.console:
            getty = f"getty@{self.console}.service"
            if self.root is None and _systemctl_state(self.run, "is-enabled", getty) == "masked":
                self.report.unchanged(f"{getty} masked (the console owns {self.console})")
            else:
                self.system(["systemctl", "mask", getty],
                            f"mask the login prompt on {self.console}")

    def summary(self, venv: PurePosixPath) -> None:
        changed, dry_run = self.report.changed, self.options.dry_run
        if not changed:
            self.echo("nothing to change: marginwatch is already installed as asked")
        elif dry_run:
            self.echo(f"dry run: {len(changed)} change(s) listed above; nothing was changed")
        else:
            self.echo(f"done: {len(changed)} change(s)")
        if dry_run:
            return
        if not (self.at(venv) / "bin" / "marginwatch").exists():
            self.echo(
                f"next: install marginwatch into {venv} (e.g. `{venv}/bin/pip install "
                f"marginwatch-*.whl`), set daemon.model_dir in {CONFIG_FILE}, then "
                "`systemctl start marginwatch`"
            )
        else:
            self.echo(
                f"next: set daemon.model_dir in {CONFIG_FILE} if not done, then "
                "`systemctl start marginwatch` and check `systemctl status marginwatch`"
            )


# --- checks ------------------------------------------------------------------------------


def _preflight(
    options: InstallOptions,
    root: Path | None,
    *,
    geteuid: Callable[[], int],
    which: Callable[[str], str | None],
    echo: Callable[[str], None],
) -> None:
    if root is not None:
        return
    problems = []
    if geteuid() != 0:
        problems.append("must be run as root (try: sudo marginwatch install-systemd ...)")
    if which("systemctl") is None:
        problems.append("systemctl not found: this machine does not use systemd")
    elif not Path("/run/systemd/system").is_dir():
        problems.append("systemd is not running here (no /run/systemd/system)")
    if not problems:
        return
    if options.dry_run:
        for problem in problems:
            echo(f"note: a real run would refuse: {problem}")
        return
    raise DeploymentError("install-systemd: " + "; ".join(problems))


def _absolute(raw: str, option: str) -> PurePosixPath:
    path = PurePosixPath(os.path.normpath(raw))
    if not path.is_absolute():
        raise DeploymentError(f"{option} {raw!r}: expected an absolute path")
    bad = sorted(set(str(path)) & _UNSAFE_PATH_CHARS)
    if bad:
        raise DeploymentError(
            f"{option} {raw!r}: contains {''.join(bad)!r}; expected a path without spaces, "
            "quotes, '%' or '$' (systemd would split or expand it)"
        )
    if path == PurePosixPath("/"):
        raise DeploymentError(f"{option} {raw!r}: expected a folder, not /")
    return path


def _console_tty(raw: str | None) -> str | None:
    if raw is None or raw.lower() in ("", "none", "no"):
        return None
    name = raw.removeprefix("/dev/")
    if not (name.startswith("tty") and name[3:].isdigit()):
        raise DeploymentError(
            f"--console {raw!r}: expected a virtual terminal such as tty1, or 'none'"
        )
    return name


def _needs_network(db_url: str | None) -> bool:
    """True for a PostgreSQL URL that reaches a host over TCP (not a Unix socket)."""
    if not db_url or not db_url.lower().startswith("postgres"):
        return False
    parts = urlsplit(db_url)
    query_host = parse_qs(parts.query).get("host", [""])[0]
    if parts.hostname:
        return True
    return not (query_host == "" or query_host.startswith("/"))


def _configured_db_url(path: Path) -> str | None:
    import tomllib

    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DeploymentError(f"{path}: cannot read the existing configuration: {exc}") from exc
    value = data.get("daemon", {}).get("db_url")
    return value if isinstance(value, str) else None


# --- texts -------------------------------------------------------------------------------


def _config_text(source: Path, db_url: str | None) -> str:
    line = tomli_w.dumps({"db_url": db_url}).rstrip("\n") if db_url else ""
    text = Template((source / "marginwatch.toml.in").read_text()).substitute(DB_URL_LINE=line)
    return text.replace("\n\n\n", "\n\n")


def _export_dir_text(source: Path, export_dir: PurePosixPath) -> str:
    extra = ""
    if any(str(export_dir) == h or str(export_dir).startswith(h + "/") for h in _PROTECTED_HOMES):
        extra = "# The folder is under a home directory, hidden by ProtectHome=yes otherwise.\n"
        extra += "ProtectHome=read-only\n"
    text = Template((source / "export-dir.conf.in").read_text()).substitute(
        EXPORT_DIR=str(export_dir), EXTRA=extra
    )
    return text.rstrip("\n") + "\n"


def _prefix_text(unit: str, prefix: PurePosixPath) -> str:
    command = "run" if unit == DAEMON_UNIT else "dashboard"
    return (
        "# Written by `marginwatch install-systemd --prefix ...`.\n"
        "[Service]\n"
        "ExecStart=\n"
        f"ExecStart={prefix}/venv/bin/marginwatch {command} --config {CONFIG_FILE}\n"
    )


# --- file system -------------------------------------------------------------------------


def _ensure_dir(
    path: Path,
    mode: int,
    report: _Report,
    *,
    group: str | None = None,
    root: Path | None = None,
    shown: PurePosixPath | None = None,
) -> None:
    name = shown or path
    if path.is_dir():
        report.unchanged(f"folder {name}")
        return
    if report.change(f"create folder {name} (mode {mode:04o})"):
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
        _chgrp(path, group, root)


def _ensure_file(
    path: Path,
    text: str,
    mode: int,
    report: _Report,
    *,
    group: str | None = None,
    root: Path | None = None,
    shown: PurePosixPath | None = None,
) -> None:
    name = shown or path
    if path.is_file() and path.read_text() == text:
        if (path.stat().st_mode & 0o7777) == mode:
            report.unchanged(str(name))
            return
        if report.change(f"set mode {mode:04o} on {name}"):
            path.chmod(mode)
        return
    verb = "update" if path.exists() else "write"
    if report.change(f"{verb} {name}"):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.chmod(mode)
        _chgrp(tmp, group, root)
        os.replace(tmp, path)


def _ensure_optional(
    path: Path, text: str | None, report: _Report, *, shown: PurePosixPath
) -> None:
    """Write ``text`` to ``path``, or remove ``path`` when ``text`` is None."""
    if text is not None:
        if not path.parent.is_dir() and report.change(f"create folder {shown.parent}"):
            path.parent.mkdir(parents=True, exist_ok=True)
        _ensure_file(path, text, 0o644, report, shown=shown)
    elif path.exists() and report.change(f"remove {shown} (no longer needed)"):
        path.unlink()


def _chgrp(path: Path, group: str | None, root: Path | None) -> None:
    if group is None or root is not None:
        return
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError as exc:  # useradd ran earlier in this run, so this is unexpected
        raise DeploymentError(f"{path}: group {group!r} does not exist; cannot chgrp") from exc
    os.chown(path, 0, gid)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _systemctl_state(run: Runner, verb: str, unit: str) -> str:
    try:
        result = run(["systemctl", verb, unit])
    except OSError:  # no systemctl: only reachable in a dry run
        return ""
    return (result.stdout or "").strip()


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)
