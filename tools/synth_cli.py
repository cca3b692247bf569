"""The ``marginwatch synth`` command: a rich progress bar around :func:`write_dataset`."""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

from rich.console import Console

from ._progress import progress_bar
from .synth import write_dataset

__all__ = ["run_synth"]


def run_synth(out: Path, **options) -> None:
    """Write the dataset, then print one summary line per centre and label."""
    console = Console(stderr=True)
    started = time.perf_counter()
    with progress_bar(console) as bar:
        task = bar.add_task("synthetic images", total=None)
        rows = write_dataset(
            out,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
            **options,
        )
    labels = Counter(r.label for r in rows)
    kinds = Counter(r.kind for r in rows)
    patients = len({r.patient_id for r in rows})
    print(
        f"wrote {len(rows)} images ({labels['tumour']} tumour, {labels['benign']} benign) "
        f"from {patients} patients, centre {rows[0].centre}, profile {rows[0].profile}, "
        f"in {time.perf_counter() - started:.1f} s on {os.cpu_count()} CPUs"
    )
    print("kinds: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    print(f"manifest: {Path(out) / 'manifest.csv'} (synthetic data, research use only)")
