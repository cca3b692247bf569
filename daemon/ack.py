"""``marginwatch ack``: record who acknowledged an alert, in the audit trail.

The one write a person makes from the theatre side; it lives apart from the dashboard,
which only reads the database. Imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from marginwatch.engine.pathnames import display_path

__all__ = ["run_ack"]


def run_ack(alert_id: int, *, by: str, note: str | None = None, db: str | None = None,
            config_path: Path | None = None, echo: Callable[[str], Any] = print) -> int:
    """``marginwatch ack``: record who acknowledged an alert (audited by the store).

    An unknown id (NotFoundError) or a second acknowledgement (ConflictError) propagates
    as a MarginwatchError: one line on stderr and exit 2 through the CLI's ``guarded``.
    """
    from marginwatch.engine.config import load_config
    from marginwatch.engine.errors import ConflictError
    from marginwatch.storage import Store

    if not by.strip():
        raise ConflictError("--by must name the person acknowledging the alert")
    config = load_config(config_path)
    url = db or config.daemon.resolved_db_url()
    with Store.open(url, busy_timeout_seconds=config.daemon.db_busy_timeout_seconds) as store:
        view = store.acknowledge(alert_id, by.strip(), note)
    when = view.acknowledged_at.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    echo(f"alert {view.id} ({view.kind}, {display_path(view.rel_path)}) acknowledged by "
         f"{view.acknowledged_by} at {when}")
    return 0
