"""The ``marginwatch synth`` command: a rich progress bar around :func:`write_dataset`."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from rich.console import Console

from ._progress import progress_bar
from .synth import worker_count, write_dataset

__all__ = ["run_synth"]


def run_synth(
    out: Path, *, degrade: str | None = None, strength: float = 1.0, **options
) -> None:
    """Write the dataset (degraded: ``degrade``, tools._degrade), then print a summary."""
    if degrade is not None:
        from ._degrade import check_degradation

        check_degradation(degrade, strength)  # before any image is written
    console = Console(stderr=True)
    started = time.perf_counter()
    with progress_bar(console) as bar:
        task = bar.add_task("synthetic images", total=None)
        rows = write_dataset(
            out,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            **options,
        )
        if degrade is not None:
            from ._degrade import degrade_dataset

            bar.update(task, description=f"degrading ({degrade})", completed=0)
            degrade_dataset(
                out, rows, degrade, strength, seed=options.get("seed", 0),
                mosaic=options.get("mosaic", False),
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
    labels = Counter(r.label for r in rows)
    kinds = Counter(r.kind for r in rows)
    patients = len({r.patient_id for r in rows})
    used = worker_count(len(rows), options.get("workers"))
    print(
        f"wrote {len(rows)} images ({labels['tumour']} tumour, {labels['benign']} benign) "
        f"from {patients} patients, centre {rows[0].centre}, profile {rows[0].profile}, "
        f"in {time.perf_counter() - started:.1f} s with {used} worker "
        f"process{'' if used == 1 else 'es'}"
    )
    print("kinds: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    if degrade is not None:
        print(f"degraded: {degrade} at strength {strength:g} (columns degradation, strength)")
    print(f"manifest: {Path(out) / 'manifest.csv'} (synthetic data, research use only)")
