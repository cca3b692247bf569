"""Quality-gate figures for docs/quality.md (a benchmark that prints, not a test).

    python -m marginwatch.tools._bench_quality [--images 60] [--train-images 60]
        [--model models/demo] [--sheet docs/quality-contact-sheet.png] [--derive]

1. ``--derive``: thresholds from a clean synthetic *training* set (seed 100), printed
   as the Python literal of :data:`marginwatch.engine.quality.SHIPPED_THRESHOLDS`.
2. Share passed on an independent clean set (seed 200) at the shipped thresholds (or
   the model card's), per set: development and external centre.
3. Share caught per degradation and strength, on degraded copies of the clean set.
4. The gate's cost as a share of ``assess`` time, on the clean images.
5. ``--sheet``: a contact sheet of caught and passed examples.

Every image is a real TIFF written by the generator and read by the engine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from ._degrade import DEGRADATIONS, degrade_dataset
from .synth import write_dataset

STRENGTHS = (0.25, 0.5, 1.0)


def _measure_set(folder: Path, rows, model, thresholds) -> list[tuple[str, object]]:
    from marginwatch.engine.assessment import prepare
    from marginwatch.engine.quality import gate

    out = []
    for row in rows:
        path = folder / row.path
        try:
            prepared = prepare(path, model)
        except Exception as exc:  # noqa: BLE001 - a figure: any refusal counts as caught
            out.append((str(path), type(exc).__name__))
            continue
        with prepared:
            for _ in prepared.iter_tiles(8):
                pass
        report = gate(prepared.measure_quality(), prepared.quality_tiles,
                      prepared.tissue_fractions, thresholds)
        out.append((str(path), report))
    return out


def _caught(result) -> str | None:
    """The first failed check's name, the error class for a refusal, None when passed."""
    if isinstance(result, str):
        return result
    return None if result.passed else result.failed[0].name


def main(argv: list[str] | None = None) -> None:
    from marginwatch.engine.model import load_model
    from marginwatch.engine.quality import effective_thresholds
    from marginwatch.models import demo_model_dir

    from ._quality_thresholds import derive_thresholds, measure_image

    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--train-images", type=int, default=60)
    ap.add_argument("--model", type=Path, default=demo_model_dir())
    ap.add_argument("--sheet", type=Path, default=None)
    ap.add_argument("--derive", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    model = load_model(args.model)
    thresholds = effective_thresholds(model.card.quality, {})
    with tempfile.TemporaryDirectory(prefix="mw-quality-") as tmp:
        root = Path(tmp)
        if args.derive:
            rows = write_dataset(root / "train", images=args.train_images, seed=100,
                                 workers=args.workers)
            measured = [measure_image(root / "train" / r.path, model) for r in rows]
            thresholds = derive_thresholds(measured, source="clean synthetic training images")
            print(f"derived from {len(rows)} clean training images (seed 100):")
            print(f"  {thresholds!r}")
        print(f"thresholds: {thresholds.model_dump(exclude={'derived_from'})}")
        print(f"  ({thresholds.derived_from})")
        sets = {}
        for centre in ("development", "external"):
            rows = write_dataset(root / f"clean-{centre}", images=args.images, seed=200,
                                 centre=centre, workers=args.workers)
            results = _measure_set(root / f"clean-{centre}", rows, model, thresholds)
            sets[centre] = (rows, results)
            reasons = Counter(_caught(r) for _, r in results)
            passed = reasons.pop(None, 0)
            print(f"clean {centre}: passed {passed}/{len(results)} = "
                  f"{100 * passed / len(results):.1f} %; gated by {dict(reasons)}")
        caught_examples = {}
        for kind in DEGRADATIONS:
            for strength in STRENGTHS:
                folder = root / f"{kind}-{strength:g}"
                rows = write_dataset(folder, images=args.images, seed=200,
                                     workers=args.workers)
                degrade_dataset(folder, rows, kind, strength, seed=200)
                results = _measure_set(folder, rows, model, thresholds)
                reasons = Counter(_caught(r) for _, r in results)
                passed = reasons.pop(None, 0)
                caught = len(results) - passed
                print(f"{kind:9s} strength {strength:<4g}: caught {caught}/{len(results)} = "
                      f"{100 * caught / len(results):5.1f} %; by {dict(reasons)}")
                if args.sheet is not None and strength in (0.5, 1.0):
                    caught_examples[(kind, strength)] = results[:2]
        _gate_cost(sets["development"], root / "clean-development", model)
        if args.sheet is not None:
            from ._quality_sheet import render_quality_sheet

            render_quality_sheet(args.sheet, sets["development"][1][:2], caught_examples)
            print(f"contact sheet: {args.sheet}")


def _gate_cost(clean, folder: Path, model, n: int = 8) -> None:
    from marginwatch.engine.assessment import assess
    from marginwatch.engine.backends import select_backend
    from marginwatch.engine.errors import InputError

    backend = select_backend(model, None)
    shares, totals, gates = [], [], []
    rows, _ = clean
    assess(folder / rows[0].path, model, backend=backend)  # warm-up
    for row in rows[1 : n + 1]:
        started = time.perf_counter()
        try:
            result = assess(folder / row.path, model, backend=backend)
        except InputError:
            continue
        total = time.perf_counter() - started
        totals.append(total)
        gates.append(result.timings["quality"])
        shares.append(result.timings["quality"] / total)
    print(f"gate cost: {1000 * float(np.median(gates)):.0f} ms of {float(np.median(totals)):.2f} s "
          f"assess (median over {len(shares)} clean images) = "
          f"{100 * float(np.median(shares)):.1f} % (max {100 * max(shares):.1f} %), "
          f"backend {backend.name}")


if __name__ == "__main__":
    main()
