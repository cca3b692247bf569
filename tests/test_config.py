"""The typed configuration: defaults, TOML, environment, and the messages for bad values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from marginwatch.engine.config import Config, load_config
from marginwatch.engine.errors import ConfigError


def test_defaults_have_units_in_names() -> None:
    config = load_config(environ={})
    assert config.source == "defaults"
    assert config.engine.max_pixels == 30_000 * 30_000
    assert config.daemon.settle_seconds == 0  # readiness by format; settling is opt-in
    assert config.daemon.stable_polls >= 2  # polling observers and scans still wait
    for section in (config.engine, config.daemon, config.dashboard):
        for name in type(section).model_fields:
            assert name == name.lower()


def test_toml_and_environment_override_in_order(tmp_path: Path) -> None:
    file = tmp_path / "marginwatch.toml"
    file.write_text(
        '[daemon]\nsettle_seconds = 5\nobserver = "polling"\n[engine]\nbatch_size = 4\n'
    )
    config = load_config(
        file,
        environ={
            "MARGINWATCH_DAEMON__SETTLE_SECONDS": "0.5",
            "MARGINWATCH_DAEMON__IGNORE_GLOBS": "*.x, *.y",
        },
        overrides={"engine": {"batch_size": 2, "backend": None}},
    )
    assert config.daemon.settle_seconds == 0.5
    assert config.daemon.observer == "polling"
    assert config.daemon.ignore_globs == ["*.x", "*.y"]
    assert config.engine.batch_size == 2
    assert config.engine.backend == "auto"
    assert str(file) in config.source and "MARGINWATCH_DAEMON__SETTLE_SECONDS" in config.source


def test_config_path_from_environment(tmp_path: Path) -> None:
    file = tmp_path / "site.toml"
    file.write_text("[dashboard]\nrecent_rows = 3\n")
    assert load_config(environ={"MARGINWATCH_CONFIG": str(file)}).dashboard.recent_rows == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[daemon]\nsettle_seconds = -1\n",
            ["daemon.settle_seconds", "got -1", "greater than or equal to 0"],
        ),
        ('[engine]\nbackend = "cuda"\n', ["engine.backend", "'cuda'", "torch-cpu"]),
        ("[daemon]\nsettle_second = 1\n", ["daemon.settle_second", "extra"]),
        ("[nope]\nx = 1\n", ["unknown section [nope]"]),
        ("[daemon\n", ["not valid TOML"]),
        ('[engine]\nmax_pixels = "lots"\n', ["engine.max_pixels", "'lots'", "integer"]),
    ],
)
def test_bad_values_name_file_field_value_and_expectation(
    tmp_path: Path, text: str, expected: list[str]
) -> None:
    file = tmp_path / "bad.toml"
    file.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(file, environ={})
    message = str(info.value)
    assert str(file) in message
    for part in expected:
        assert part in message, message


def test_bad_environment_variable_is_named() -> None:
    with pytest.raises(ConfigError, match="MARGINWATCH_DAEMON__NOPE"):
        load_config(environ={"MARGINWATCH_DAEMON__NOPE": "1"})
    with pytest.raises(
        ConfigError, match=r"MARGINWATCH_DAEMON__SETTLE_SECONDS.*daemon.settle_seconds: got 'soon'"
    ):
        load_config(environ={"MARGINWATCH_DAEMON__SETTLE_SECONDS": "soon"})


def test_environment_names_and_messages_are_todays() -> None:
    """The variable names (section and field in any case) and the one-line messages."""
    config = load_config(environ={
        "MARGINWATCH_daemon__Settle_Seconds": "1.5",
        "MARGINWATCH_DASHBOARD__BELL": "false",
        "MARGINWATCH_ENGINE__DEFAULT_PROFILE": "rgb",
        "MARGINWATCH_DAEMON__IMAGE_GLOBS": "*.tif,,*.png ",
        "MARGINWATCH_CONFIG_UNUSED": "no double underscore: not an override",
        "OTHER__VARIABLE": "1",
    })
    assert config.daemon.settle_seconds == 1.5
    assert config.dashboard.bell is False
    assert config.engine.default_profile == "rgb"
    assert config.daemon.image_globs == ["*.tif", "*.png"]
    assert config.source == (
        "defaults + environment (MARGINWATCH_DAEMON__IMAGE_GLOBS, MARGINWATCH_DASHBOARD__BELL, "
        "MARGINWATCH_ENGINE__DEFAULT_PROFILE, MARGINWATCH_daemon__Settle_Seconds)"
    )
    expected = {
        "MARGINWATCH_NOPE__X": "environment variable MARGINWATCH_NOPE__X: unknown section 'nope'; "
        "expected one of ['cases', 'daemon', 'dashboard', 'engine']",
        "MARGINWATCH_DASHBOARD__NOPE": "environment variable MARGINWATCH_DASHBOARD__NOPE: unknown "
        "field dashboard.nope; expected one of ['bell', 'nice', 'recent_rows', "
        "'refresh_per_second']",
        "MARGINWATCH_DASHBOARD__BELL__X": "environment variable MARGINWATCH_DASHBOARD__BELL__X: "
        "unknown field dashboard.bell__x; expected one of ['bell', 'nice', 'recent_rows', "
        "'refresh_per_second']",
        "MARGINWATCH_DASHBOARD__RECENT_ROWS": "defaults + environment "
        "(MARGINWATCH_DASHBOARD__RECENT_ROWS): dashboard.recent_rows: got 'many'; expected "
        "input should be a valid integer, unable to parse string as an integer",
    }
    for name, message in expected.items():
        with pytest.raises(ConfigError) as info:
            load_config(environ={name: "many"})
        assert str(info.value) == message


def test_environment_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARGINWATCH_DASHBOARD__RECENT_ROWS", "7")
    assert load_config().dashboard.recent_rows == 7


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml", environ={})


def test_default_db_is_sqlite_in_state_dir(tmp_path: Path) -> None:
    config = Config.model_validate({"daemon": {"state_dir": str(tmp_path)}})
    assert config.daemon.resolved_db_url() == f"sqlite:///{tmp_path / 'marginwatch.db'}"


def test_config_module_does_not_import_torch() -> None:
    code = (
        "import sys, marginwatch.engine.config, marginwatch.engine.errors; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_version_command() -> None:
    exe = Path(sys.executable).with_name("marginwatch")
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("marginwatch ")
