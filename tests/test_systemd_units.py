"""The systemd units, the configuration template and ``marginwatch install-systemd``.

There is no running systemd here, so the units are checked offline with the real
``systemd-analyze`` (``verify --man=no --generators=no`` on unit files, which also reads
their ``*.d/`` drop-ins; ``security --offline=true``), and the installer runs with its
hidden ``--root`` into a temporary tree, through the real CLI in a subprocess.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from marginwatch.daemon.install import InstallOptions, install_systemd, units_source_dir
from marginwatch.engine.config import Config, load_config
from marginwatch.engine.errors import DeploymentError

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
SYSTEMCTL = shutil.which("systemctl")
needs_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")
MARGINWATCH = Path(sys.executable).parent / "marginwatch"
MAX_EXPOSURE = 2.0


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MARGINWATCH), *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def installed(tmp_path: Path) -> tuple[Path, Path]:
    """install-systemd --root into tmp_path/root; the prefix's ExecStart exists for real."""
    root = tmp_path / "root"
    prefix = tmp_path / "prefix"
    (prefix / "venv" / "bin").mkdir(parents=True)
    (prefix / "venv" / "bin" / "marginwatch").symlink_to(MARGINWATCH)
    result = _cli(
        "install-systemd", "--root", str(root), "--prefix", str(prefix),
        "--export-dir", "/srv/scanner-export",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return root, prefix


def _verify(unit: Path) -> None:
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "--man=no", "--generators=no", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    # verify exits 0 on unknown keys and bad values too: any message is a finding.
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def _exposure(unit: str, root: Path | None = None, cwd: Path | None = None) -> float:
    argv = [SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager"]
    if root is not None:
        argv.append(f"--root={root}")
    result = subprocess.run(
        [*argv, unit], capture_output=True, text=True, timeout=60, check=False, cwd=cwd
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


# --- the unit files ----------------------------------------------------------------------


@needs_analyze
def test_shipped_units_verify(tmp_path: Path) -> None:
    source = units_source_dir()
    for name in ("marginwatch.service", "marginwatch-dashboard@.service"):
        text = (source / name).read_text()
        # ExecStart must name an existing executable: use this venv's marginwatch.
        (tmp_path / name).write_text(
            text.replace("/opt/marginwatch/venv/bin/marginwatch", str(MARGINWATCH))
        )
    (tmp_path / "marginwatch-dashboard@tty1.service").symlink_to("marginwatch-dashboard@.service")
    _verify(tmp_path / "marginwatch.service")
    _verify(tmp_path / "marginwatch-dashboard@tty1.service")


@needs_analyze
def test_installed_units_and_dropins_verify(installed: tuple[Path, Path]) -> None:
    root, _ = installed
    units = root / "etc/systemd/system"
    assert (units / "marginwatch.service.d/prefix.conf").is_file()
    (units / "marginwatch-dashboard@tty1.service").symlink_to("marginwatch-dashboard@.service")
    _verify(units / "marginwatch.service")
    _verify(units / "marginwatch-dashboard@tty1.service")


@needs_analyze
def test_security_exposure_of_the_daemon(installed: tuple[Path, Path], tmp_path: Path) -> None:
    root, _ = installed
    exposure = _exposure("marginwatch.service", root=root)
    print(f"systemd-analyze security marginwatch.service (SQLite): {exposure}")
    assert exposure <= MAX_EXPOSURE

    pg_root = tmp_path / "pg-root"
    result = _cli(
        "install-systemd", "--root", str(pg_root), "--export-dir", "/srv/scanner-export",
        "--db-url", "postgresql+psycopg://marginwatch:secret@db.example.org/marginwatch",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (pg_root / "etc/systemd/system/marginwatch.service.d/network.conf").is_file()
    pg_exposure = _exposure("marginwatch.service", root=pg_root)
    print(f"systemd-analyze security marginwatch.service (PostgreSQL over TCP): {pg_exposure}")
    assert exposure < pg_exposure <= MAX_EXPOSURE


@needs_analyze
def test_security_exposure_of_the_console(installed: tuple[Path, Path]) -> None:
    root, _ = installed
    units = root / "etc/systemd/system"
    (units / "marginwatch-dashboard@tty1.service").symlink_to("marginwatch-dashboard@.service")
    exposure = _exposure("marginwatch-dashboard@tty1.service", root=root)
    print(f"systemd-analyze security marginwatch-dashboard@tty1.service: {exposure}")
    assert exposure <= MAX_EXPOSURE


def _settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_daemon_unit_has_what_the_issue_asks() -> None:
    settings = _settings((units_source_dir() / "marginwatch.service").read_text())
    expected = {
        "Type": "notify", "Restart": "on-failure", "User": "marginwatch",
        "StateDirectory": "marginwatch", "ConfigurationDirectory": "marginwatch",
        "LogsDirectory": "marginwatch", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "NoNewPrivileges": "yes", "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_UNIX", "DevicePolicy": "closed", "UMask": "0077",
    }  # fmt: skip
    for key, value in expected.items():
        assert settings.get(key) == [value], (key, settings.get(key))
    assert settings["SystemCallFilter"][0] == "@system-service"
    assert settings["ExecStart"] == [
        "/opt/marginwatch/venv/bin/marginwatch run --config /etc/marginwatch/marginwatch.toml"
    ]
    assert "WatchdogSec" in settings and "StartLimitBurst" in settings
    assert "StartLimitIntervalSec" in settings
    assert "char-nvidia* rw" in settings["DeviceAllow"]
    assert "/dev/nvidiactl rw" in settings["DeviceAllow"]
    # Left off on purpose (CUDA needs them off); the file says why.
    assert "PrivateDevices" not in settings and "MemoryDenyWriteExecute" not in settings
    assert "ProcSubset" not in settings


# --- the configuration template --------------------------------------------------------


def _commented_fields(text: str) -> dict[str, dict[str, str]]:
    """``[section]`` -> {field: the value text of its ``# field = value`` line}."""
    found: dict[str, dict[str, str]] = {}
    section = ""
    for line in text.splitlines():
        if re.fullmatch(r"\[\w+\]", line):
            section = line[1:-1]
        elif m := re.fullmatch(r"# (\w+) = (.+)", line):
            found.setdefault(section, {}).setdefault(m.group(1), m.group(2))
    return found


def test_config_template_lists_every_field_with_its_default(tmp_path: Path) -> None:
    text = (units_source_dir() / "marginwatch.toml.in").read_text()
    fields = _commented_fields(text)
    defaults = Config()
    for section in ("engine", "daemon", "dashboard", "cases"):
        model = getattr(defaults, section)
        listed = fields.get(section, {})
        assert sorted(listed) == sorted(type(model).model_fields), section
        for name, raw in listed.items():
            default = getattr(model, name)
            if default is None:
                continue  # an example value; the comment says the default is none
            parsed = tomllib.loads(f"v = {raw}")["v"]
            shown = str(default) if isinstance(default, Path) else default
            assert parsed == shown, f"{section}.{name}: template {raw}, default {default!r}"


def test_config_template_with_every_line_uncommented_loads(tmp_path: Path) -> None:
    text = (units_source_dir() / "marginwatch.toml.in").read_text()
    text = text.replace("${DB_URL_LINE}", "")
    uncommented = re.sub(r"(?m)^# (\w+ = .+)$", r"\1", text)
    path = tmp_path / "all.toml"
    path.write_text(uncommented)
    config = load_config(path, environ={})
    assert config.daemon.state_dir == Path("/var/lib/marginwatch")


# --- install-systemd -------------------------------------------------------------------


def test_install_writes_the_tree_and_a_second_run_changes_nothing(
    installed: tuple[Path, Path],
) -> None:
    root, prefix = installed
    units = root / "etc/systemd/system"
    source = units_source_dir()
    assert (units / "marginwatch.service").read_text() == (
        source / "marginwatch.service"
    ).read_text()
    export = (units / "marginwatch.service.d/export-dir.conf").read_text()
    assert "Environment=MARGINWATCH_DAEMON__WATCH_DIR=/srv/scanner-export" in export
    assert "ReadOnlyPaths=/srv/scanner-export" in export
    assert "RequiresMountsFor=/srv/scanner-export" in export
    prefix_conf = (units / "marginwatch.service.d/prefix.conf").read_text()
    assert f"ExecStart={prefix}/venv/bin/marginwatch run --config" in prefix_conf
    assert not (units / "marginwatch.service.d/network.conf").exists()
    config = root / "etc/marginwatch/marginwatch.toml"
    assert config.stat().st_mode & 0o777 == 0o640
    assert (root / "etc/marginwatch").stat().st_mode & 0o777 == 0o750
    loaded = load_config(config, environ={"MARGINWATCH_DAEMON__WATCH_DIR": "/srv/x"})
    assert loaded.daemon.db_url is None and loaded.daemon.watch_dir == Path("/srv/x")

    snapshot = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    again = _cli(
        "install-systemd", "--root", str(root), "--prefix", str(prefix),
        "--export-dir", "/srv/scanner-export",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "nothing to change" in again.stdout
    assert "change " not in again.stdout
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == snapshot


def test_dry_run_prints_every_step_and_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    result = _cli(
        "install-systemd", "--root", str(root), "--dry-run", "--export-dir", "/srv/scan",
        "--db-url", "postgresql+psycopg://u:p@10.0.0.5/mw",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not root.exists()
    out = result.stdout
    for step in (
        "useradd --system", "-m venv", "/etc/marginwatch/marginwatch.toml",
        "marginwatch.service.d/export-dir.conf", "marginwatch.service.d/network.conf",
        "systemctl daemon-reload", "systemctl enable marginwatch.service",
        "systemctl enable marginwatch-dashboard@tty1.service", "systemctl mask getty@tty1",
    ):  # fmt: skip
        assert step in out, (step, out)
    assert "nothing was changed" in out


def test_real_run_refuses_without_systemd_or_root(tmp_path: Path) -> None:
    options = InstallOptions(export_dir="/srv/scan")
    lines: list[str] = []
    with pytest.raises(DeploymentError, match="must be run as root"):
        install_systemd(options, echo=lines.append, geteuid=lambda: 1000, which=lambda _: None)
    with pytest.raises(DeploymentError, match="systemctl not found"):
        install_systemd(options, echo=lines.append, geteuid=lambda: 0, which=lambda _: None)
    assert lines == []  # refused before printing or doing anything
    # a dry run says what a real run would refuse, and goes on
    install_systemd(
        InstallOptions(export_dir="/srv/scan", dry_run=True, root=None),
        echo=lines.append, geteuid=lambda: 1000, which=lambda _: None,
        runner=_no_commands,
    )  # fmt: skip
    assert any("a real run would refuse: must be run as root" in line for line in lines)


def _no_commands(argv):  # noqa: ANN001, ANN202 - only read-only queries may run
    if list(argv[:2]) == ["systemctl", "is-enabled"]:
        return subprocess.CompletedProcess(argv, 1, stdout="disabled\n", stderr="")
    raise AssertionError(f"dry run ran {argv}")


@pytest.mark.skipif(os.path.isdir("/run/systemd/system"), reason="systemd is running here")
def test_cli_refusal_is_one_line() -> None:
    result = _cli("install-systemd", "--export-dir", "/srv/scan")
    assert result.returncode == 2
    assert result.stderr.startswith("marginwatch: error: install-systemd:")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--export-dir is required"),
        (["--export-dir", "relative/dir"], "expected an absolute path"),
        (["--export-dir", "/srv/my scans"], "without spaces"),
        (["--export-dir", "/srv/%i"], "without spaces"),
        (["--export-dir", "/srv/s", "--console", "ttyS0x"], "virtual terminal"),
    ],
)
def test_bad_options_are_refused_clearly(tmp_path: Path, args: list[str], message: str) -> None:
    result = _cli("install-systemd", "--root", str(tmp_path / "r"), *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "r").exists()


def test_network_dropin_follows_the_database_url(tmp_path: Path) -> None:
    def dropins(db_url: str | None, name: str) -> list[str]:
        root = tmp_path / name
        install_systemd(
            InstallOptions(export_dir="/srv/s", db_url=db_url, root=root), echo=lambda _: None
        )
        return sorted(p.name for p in (root / "etc/systemd/system").rglob("network.conf"))

    assert dropins(None, "sqlite") == []
    assert dropins("postgresql+psycopg://mw@/mw?host=/run/postgresql", "unix") == []
    assert dropins("postgresql+psycopg://mw:pw@db.example.org:5432/mw", "tcp") == [
        "network.conf", "network.conf",
    ]  # fmt: skip


def test_changing_the_export_dir_and_prefix_updates_only_dropins(tmp_path: Path) -> None:
    root = tmp_path / "root"
    quiet: list[str] = []
    install_systemd(
        InstallOptions(export_dir="/srv/a", prefix="/opt/other", root=root), echo=quiet.append
    )
    config_before = (root / "etc/marginwatch/marginwatch.toml").read_bytes()
    changes = install_systemd(
        InstallOptions(export_dir="/home/scanner/export", root=root), echo=quiet.append
    )
    units = root / "etc/systemd/system"
    assert sorted(changes) == [
        "create folder /opt/marginwatch (mode 0755)",
        "remove /etc/systemd/system/marginwatch-dashboard@.service.d/prefix.conf"
        " (no longer needed)",
        "remove /etc/systemd/system/marginwatch.service.d/prefix.conf (no longer needed)",
        "update /etc/systemd/system/marginwatch.service.d/export-dir.conf",
    ]
    export = (units / "marginwatch.service.d/export-dir.conf").read_text()
    assert "ReadOnlyPaths=/home/scanner/export" in export
    assert "ProtectHome=read-only" in export  # else ProtectHome=yes hides it
    assert (root / "etc/marginwatch/marginwatch.toml").read_bytes() == config_before


@pytest.mark.skipif(SYSTEMCTL is None, reason="systemctl not installed")
def test_install_sections_enable_offline(installed: tuple[Path, Path]) -> None:
    root, _ = installed
    for unit in ("marginwatch.service", "marginwatch-dashboard@tty1.service"):
        result = subprocess.run(
            [SYSTEMCTL, f"--root={root}", "enable", unit],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    wants = root / "etc/systemd/system/multi-user.target.wants"
    assert (wants / "marginwatch.service").is_symlink()
    assert (wants / "marginwatch-dashboard@tty1.service").is_symlink()


_MDWE_EXEC = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    sys.exit(77)
os.execv(sys.argv[1], sys.argv[1:])
"""


def test_console_runs_with_memory_deny_write_execute(tmp_path: Path) -> None:
    """The console unit sets MemoryDenyWriteExecute=yes; the dashboard must tolerate it.

    Linux >= 6.3 offers the same policy as a prctl (PR_SET_MDWE, inherited across
    exec; systemd >= 255 uses it): the real ``dashboard --once`` runs under it here.
    """
    db = tmp_path / "mw.db"
    assert _cli("db", "upgrade", "--db", str(db)).returncode == 0
    result = subprocess.run(
        [sys.executable, "-c", _MDWE_EXEC, str(MARGINWATCH), "dashboard", "--once",
         "--db", str(db), "--width", "100", "--height", "30"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if result.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert result.returncode == 0, result.stderr
    assert "research use" in result.stdout
