"""``marginwatch predict``: assess image files from the command line.

One line (or one JSON object with ``--json``) per image, in argument order. An image
that cannot be assessed prints an explicit ``NOT ASSESSED`` line with the reason,
never something that could pass for a negative result (a scan that fails the quality
gate names the check, its value and threshold), and makes the exit code 2
while the other images are still assessed. The "research use, not a diagnosis" notice
goes to stdout in text mode and to stderr with ``--json`` (stdout stays JSON lines).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from marginwatch.engine.config import load_config
from marginwatch.engine.errors import InputError, ModelError
from marginwatch.engine.pathnames import display_path
from marginwatch.models import demo_model_dir

__all__ = ["DEMO_MODEL_DIR", "default_model_dir", "run_predict"]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_NOT_ASSESSED = 2

DEMO_MODEL_DIR = demo_model_dir()  # package data: in the wheel, and models/demo in a checkout
NOTICE = "marginwatch: research use only, not a diagnosis; not a medical device."
DEMO_NOTICE = (
    "marginwatch: this model is a SYNTHETIC DEMO trained on generated images; its outputs "
    "say nothing about real tissue."
)


def default_model_dir(configured: Path | None = None) -> Path:
    """``--model`` default: daemon.model_dir from the config, else the bundled demo model.

    A configured folder is returned as it is, even when it is missing (loading it then
    says so): a site model that went astray must never be replaced silently by the
    synthetic demo model.
    """
    if configured is not None:
        return Path(configured)
    if DEMO_MODEL_DIR.is_dir():
        return DEMO_MODEL_DIR
    raise ModelError(
        f"no model given and the bundled demo model {DEMO_MODEL_DIR} is not there; "
        "pass --model DIR (a folder with model.json and weights.safetensors)"
    )


def _cam_path(base: Path, index: int, count: int) -> Path:
    if count == 1:
        return base
    return base.with_name(f"{base.stem}-{index + 1}{base.suffix or '.png'}")


def run_predict(
    images: Sequence[str | os.PathLike[str]],
    *,
    model_dir: str | os.PathLike[str] | None = None,
    as_json: bool = False,
    cam: str | os.PathLike[str] | None = None,
    config_path: str | os.PathLike[str] | None = None,
    backend_name: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Assess each image; return the exit code (0, or 2 when any was not assessed)."""
    from marginwatch.engine.assessment import assess
    from marginwatch.engine.backends import select_backend
    from marginwatch.engine.model import load_model
    from marginwatch.engine.render import heatmap_overlay_png

    out = out or sys.stdout
    err = err or sys.stderr
    overrides = {"engine": {"backend": backend_name}} if backend_name else None
    config = load_config(config_path, overrides=overrides)
    folder = (
        Path(model_dir) if model_dir is not None else default_model_dir(config.daemon.model_dir)
    )
    model = load_model(folder)
    backend = select_backend(model, config.engine)
    notice = err if as_json else out
    print(NOTICE, file=notice)
    if model.card.synthetic_demo:
        print(DEMO_NOTICE, file=notice)
    notice.flush()
    code = EXIT_OK
    for index, image in enumerate(images):
        try:
            result = assess(image, model, config.engine, backend=backend)
        except InputError as exc:
            code = EXIT_NOT_ASSESSED
            _not_assessed(out, image, exc, as_json)
            continue
        cam_file = None
        if cam is not None:
            cam_file = _cam_path(Path(cam), index, len(images))
            try:
                cam_file.write_bytes(heatmap_overlay_png(result.heatmap, result.preview_rgb))
            except OSError as exc:
                print(
                    f"marginwatch: error: {cam_file}: cannot write the Grad-CAM overlay: "
                    f"{exc.strerror or exc}",
                    file=err,
                )
                code = EXIT_NOT_ASSESSED
                cam_file = None
        _assessed(out, image, result, as_json, cam_file)
    return code


def _assessed(
    out: TextIO,
    image: str | os.PathLike[str],
    a,
    as_json: bool,  # noqa: ANN001
    cam_file: Path | None,
) -> None:
    if as_json:
        record = {
            "path": str(image),
            "assessed": True,
            "probability": round(a.probability, 6),
            "raw_probability": round(a.raw_probability, 6),
            "decision": "tumour at margin" if a.decision else "no tumour at margin",
            "tumour_at_margin": a.decision,
            "threshold": a.threshold,
            "tiles": len(a.tiles),
            "driving_tile": {"index": a.driving_tile, "box": list(a.tiles[a.driving_tile].box)},
            "model_digest": a.model_digest,
            "synthetic_demo": a.synthetic_demo,
            "backend": a.backend,
            "device": a.device,
            "sha256": a.sha256,
            "um_per_px": a.um_per_px,
            "um_per_px_source": a.um_per_px_source,
            "seconds": round(a.seconds, 4),
            "timings": {k: round(v, 4) for k, v in a.timings.items()},
            "cam": None if cam_file is None else str(cam_file),
            "quality": None if a.quality is None else a.quality.to_dict(),
            "research_use_only": True,
        }
        print(json.dumps(record), file=out, flush=True)
        return
    verdict = "TUMOUR AT MARGIN" if a.decision else "no tumour at margin"
    name = display_path(image)  # any bytes, newlines, escapes: one printable line
    demo = " [synthetic demo model]" if a.synthetic_demo else ""
    line = (
        f"{name}: {verdict} (p={a.probability:.3f}, threshold {a.threshold:.2f}) | "
        f"{len(a.tiles)} tiles | model {a.model_digest[:12]}{demo} | {a.backend} | "
        f"{a.seconds:.2f} s"
    )
    gated = 0 if a.quality is None else a.quality.tiles_total - len(a.quality.tiles_kept)
    if gated:
        line += f" | {gated} tile(s) left out by the quality gate"
    if cam_file is not None:
        line += f" | cam {cam_file}"
    print(line, file=out, flush=True)


def _not_assessed(
    out: TextIO, image: str | os.PathLike[str], exc: Exception, as_json: bool
) -> None:
    reason = str(exc)
    prefix = f"{image}: "
    if reason.startswith(prefix):
        reason = reason[len(prefix) :]
    if as_json:
        record = {
            "path": str(image),
            "assessed": False,
            "error": type(exc).__name__,
            "reason": reason,
            "research_use_only": True,
        }
        report = getattr(exc, "report", None)  # QualityGateError: every measurement
        if report is not None:
            record["quality"] = report.to_dict()
        print(json.dumps(record), file=out, flush=True)
    else:
        print(f"{display_path(image)}: NOT ASSESSED: {display_path(reason)}", file=out,
              flush=True)
