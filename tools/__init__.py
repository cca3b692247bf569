"""marginwatch.tools: everything around the model.

The synthetic FCM generator (:mod:`.synth`, margin locations of its cases in
:mod:`._synth_cases`), training (:mod:`.train`), evaluation
(:mod:`.evaluate`) with its one metrics module (:mod:`.metrics`), ONNX/TensorRT export
(:mod:`.export`) and benchmarks (:mod:`.bench`). Names are imported lazily so that
importing one tool does not load the others (or torch, for the metrics).
"""

from __future__ import annotations

from marginwatch.engine import lazy_exports

_EXPORTS: dict[str, str] = {
    "SynthImage": "synth",
    "generate_image": "synth",
    "write_dataset": "synth",
    "write_image": "synth",
    "has_sidecar": "_synth_cases",  # margin locations of synthetic cases (names, sidecars)
    "location_of": "_synth_cases",
    "scan_name": "_synth_cases",
    "write_sidecar": "_synth_cases",
    "TrainOptions": "_options",  # no torch: the CLI checks options before loading it
    "preflight": "_options",
    "preset_options": "_options",
    "train": "train",
    "rederive": "_quality_thresholds",  # a trained model's quality-gate thresholds, again
    "evaluate": "evaluate",
    "run_export": "export",
    "BenchOptions": "bench",
    "run_bench": "bench",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
