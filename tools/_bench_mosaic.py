"""Section 5: one large mosaic through ``assess``, in a child process of its own.

The parent starts ``python -m marginwatch.tools._bench_mosaic ...``, samples the child's
resident memory from ``/proc/PID/status`` while it runs (and kills it above a safety
cap, so a benchmark never exhausts a shared machine), and reaps it with ``os.wait4``,
whose rusage ``ru_maxrss`` is that child's own peak RSS (KiB on Linux). The child also
reports its ``VmHWM`` just before exiting; the two agree.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["run_mosaic_child"]


def _vm(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _child(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="marginwatch.tools._bench_mosaic")
    parser.add_argument("--model", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--backend", default="torch-cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    import torch
    from marginwatch.engine import load_model, select_backend
    from marginwatch.engine.assessment import finish, prepare
    from marginwatch.engine.config import EngineConfig
    from marginwatch.engine.inference import Inference

    config = EngineConfig(backend=args.backend, precision=args.precision,
                          batch_size=args.batch_size)
    model = load_model(args.model)
    backend = select_backend(model, config)
    size = model.card.input_size_px
    backend.infer(torch.zeros(min(2, args.batch_size), 3, size, size))  # warm-up, not timed
    rss_before = _vm("VmRSS")
    started = time.perf_counter()
    prepared = prepare(args.image, model, config)  # the plan; tiles are read as they stream
    prepared_at = time.perf_counter()
    rss_prepared = _vm("VmRSS")
    progress = Path(args.out).with_suffix(".progress.json")
    total_tiles = len(prepared.boxes)
    chunk_mib = config.batch_size * 3 * size * size / 2**20  # one uint8 chunk in flight
    parts = []
    done = 0
    with prepared:  # what infer_tiles does, + progress
        for chunk in prepared.iter_tiles(config.batch_size):
            parts.append(backend.infer(chunk))
            done += int(chunk.shape[0])
            progress.write_text(json.dumps({
                "tiles": total_tiles, "tiles_inferred": done,
                "prepare_seconds": prepared_at - started,
                "infer_seconds": time.perf_counter() - prepared_at,
                "rss_after_prepare_mib": (rss_prepared or 0) / 1024,
                "tiles_tensor_mib": chunk_mib,
            }), encoding="utf-8")
    inference = Inference.concat(parts)
    assessment = finish(prepared, inference, model, config, backend=backend)
    total = time.perf_counter() - started
    tiles = len(assessment.tiles)
    result: dict[str, Any] = {
        "shape": list(assessment.shape),
        "tiles": tiles,
        "tile_px": prepared.tile_px,
        "total_seconds": total,
        "prepare_seconds": prepared_at - started,  # plan only (tiles read while streaming)
        "tiles_per_second": tiles / total if total > 0 else None,
        "stages": assessment.timings,
        "tiles_tensor_mib": chunk_mib,  # streamed: one chunk of uint8 tiles at a time
        "rss_before_mib": (rss_before or 0) / 1024,
        "rss_after_prepare_mib": (rss_prepared or 0) / 1024,
        "vm_hwm_mib": (_vm("VmHWM") or 0) / 1024,
        "backend": backend.name,
        "precision": backend.precision,
    }
    Path(args.out).write_text(json.dumps(result), encoding="utf-8")
    return 0


def run_mosaic_child(model_dir: Path, image: Path, out: Path, *, backend: str, precision: str,
                     batch_size: int, rss_cap_mib: float, timeout_seconds: float) -> dict[str, Any]:
    """Run the child (see the module docstring); its JSON plus ``peak_rss_mib`` from wait4."""
    command = [sys.executable, "-m", "marginwatch.tools._bench_mosaic", "--model", str(model_dir),
               "--image", str(image), "--backend", backend, "--precision", precision,
               "--batch-size", str(batch_size), "--out", str(out)]
    log = out.with_suffix(".log")
    started = time.monotonic()
    killed: str | None = None
    sampled_peak = 0
    with log.open("wb") as fh:
        proc = subprocess.Popen(command, stdout=fh, stderr=subprocess.STDOUT)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            try:
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        sampled_peak = max(sampled_peak, int(line.split()[1]))
            except OSError:
                pass
            if killed is None and sampled_peak / 1024 > rss_cap_mib:
                killed = f"resident memory passed the safety cap of {rss_cap_mib:.0f} MiB"
                proc.kill()
            elif killed is None and time.monotonic() - started > timeout_seconds:
                killed = f"still running after {timeout_seconds:.0f} s"
                proc.kill()
            time.sleep(0.1)
    proc.returncode = os.waitstatus_to_exitcode(status)
    result: dict[str, Any] = {}
    if out.exists() and killed is None and proc.returncode == 0:
        result = json.loads(out.read_text(encoding="utf-8"))
    else:
        result["error"] = killed or (f"child exited with {proc.returncode}: "
                                     + log.read_text(errors="replace")[-1500:])
        progress = out.with_suffix(".progress.json")
        if progress.exists():  # stopped part-way: what it had done, and the rate so far
            partial = json.loads(progress.read_text(encoding="utf-8"))
            result["partial"] = partial
            if partial["infer_seconds"] > 0:
                rate = partial["tiles_inferred"] / partial["infer_seconds"]
                result["partial"]["infer_tiles_per_second"] = rate
                result["partial"]["projected_total_seconds"] = (
                    partial["prepare_seconds"] + partial["tiles"] / rate)
    result["peak_rss_mib"] = usage.ru_maxrss / 1024  # this child only (wait4)
    result["sampled_peak_rss_mib"] = sampled_peak / 1024
    result["wall_seconds"] = time.monotonic() - started
    return result


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
