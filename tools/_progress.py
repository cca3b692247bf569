"""The tools' one progress bar (rich.progress): what, a bar, done/total, time elapsed.

``synth``, ``train`` and ``evaluate`` draw it on stderr; a caller adds columns of its
own after the standard ones (``train``'s epoch line adds the last batch's loss).
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

__all__ = ["progress_bar"]


def progress_bar(
    console: Console, *extra: ProgressColumn, transient: bool = True
) -> Progress:
    """A :class:`~rich.progress.Progress` with the standard columns, then ``extra``."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        *extra,
        console=console,
        transient=transient,
    )
