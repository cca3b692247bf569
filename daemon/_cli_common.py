"""What every ``marginwatch`` command module shares: exit codes, the one-line error
path, and the ``--config``/``--db`` options (daemon/cli.py and daemon/_record_commands.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from marginwatch.engine.errors import MarginwatchError

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_CHECK_FAILED",
    "EXIT_INTERRUPTED",
    "ConfigOption",
    "DbOption",
    "fail",
    "guarded",
]

T = TypeVar("T")

EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    """Print ``marginwatch: error: message`` to stderr and return the Exit to raise."""
    typer.echo(f"marginwatch: error: {message}", err=True)
    return typer.Exit(code)


def guarded(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``call``; a MarginwatchError becomes a one-line message and exit code 2."""
    try:
        return call(*args, **kwargs)
    except MarginwatchError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        envvar="MARGINWATCH_CONFIG",
        help="TOML configuration file (default: $MARGINWATCH_CONFIG, else built-in defaults).",
        show_default=False,
    ),
]
DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Database URL (sqlite:///PATH or postgresql+psycopg://...), or a SQLite file path.",
        show_default=False,
    ),
]
