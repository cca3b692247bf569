"""The ``marginwatch db`` commands (called from cli.py): create, migrate, report the schema.

``db upgrade`` is the one command here that writes (it creates the default database's
state folder when needed and runs the Alembic migrations); ``db current`` only reads.
Imports no torch.
"""

from __future__ import annotations

from pathlib import Path

from marginwatch.engine.errors import ConfigError

from ._audit_cli import _resolve

__all__ = ["db_current", "db_upgrade"]


def db_upgrade(db: str | None, config: Path | None) -> None:
    from marginwatch.engine.config import load_config
    from marginwatch.storage import Store

    url, busy = _resolve(db, config)
    daemon = load_config(config).daemon
    if db is None and daemon.db_url is None:
        _make_state_dir(daemon.state_dir)  # the configured home of the default database
    before, head = (
        Store.schema_status(url, busy_timeout_seconds=busy) if _exists(url) else (None, "")
    )
    with Store.open(url, upgrade=True, busy_timeout_seconds=busy) as store:
        head = store.current_revision() or head
        where = store.location
    print(
        f"{where}: schema at {head} (head)"
        + ("" if before == head else f", upgraded from {before or 'empty'}")
    )


def _exists(url: str) -> bool:
    from marginwatch.storage import parse_target

    target = parse_target(url)
    return target.sqlite_path is None or target.sqlite_path.exists()


def _make_state_dir(state_dir: Path) -> None:
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"daemon.state_dir={state_dir}: cannot create it ({exc.strerror})"
        ) from exc


def db_current(db: str | None, config: Path | None) -> int:
    from marginwatch.storage import Store

    url, busy = _resolve(db, config)
    from marginwatch.storage.schema import known_revisions

    current, head = Store.schema_status(url, busy_timeout_seconds=busy)
    if current == head:
        state = "up to date"
    elif current is None:
        state = "empty: run `marginwatch db upgrade`"
    elif current not in known_revisions():
        state = "NEWER than this marginwatch: upgrade marginwatch"
    else:
        state = "older: run `marginwatch db upgrade`"
    print(f"{current or '-'} (code head {head}): {state}")
    return 0 if current == head else 1
