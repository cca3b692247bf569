"""From an image file to an assessment: ``prepare`` -> backend ``infer`` -> ``finish``.

``prepare`` opens and checks the file (engine.reader; its SHA-256 is computed while it
is read), builds an overview at heatmap scale for the tissue mask and the preview, and
plans the tissue tiles at the model's micrometres per pixel. It does not cut them: the
returned :class:`PreparedImage` keeps the file open and reads tiles on demand,
``iter_tiles(chunk)`` yielding bounded ``(n, 3, S, S)`` uint8 RGB chunks, so a
20,000 px mosaic never holds more than one chunk of its 529 tiles in memory. The
backend normalises them on its device (engine.normalisation). The file is closed after
the last chunk, by ``close()`` / the context manager, or when the image is collected.

``finish`` turns the joined :class:`~marginwatch.engine.inference.Inference` (small:
logits, probabilities and CAMs at feature-map resolution) into the image decision, the
driving tile and a heatmap in source space. Before that it applies the quality gate
(engine.quality): ``prepare`` measures each tile's saturation and keeps the overview
for the exposure, tissue, void and seam measures (taken by
:meth:`PreparedImage.measure_quality`, at the latest in ``finish``: the daemon's reader
takes them while the tiles are inferred), each chunk of tiles read is measured for
focus, and ``finish`` leaves out the
tiles that fail, or raises :class:`~marginwatch.engine.errors.QualityGateError` ("not
assessable", each reason with its value and threshold) for an image that fails. The
daemon batches the tiles of several images between the two; :func:`assess` runs the
three in a row, a chunk at a time.

Axis order at the boundaries: source arrays (H, W, C); tiles (T, 3, H, W); heatmap and
overview (H / scale, W / scale).

:class:`PreparedImage` itself (on-demand tile reading and the per-tile quality
bookkeeping) is in engine._prepared and is re-exported here; this module keeps the
planning, the decision (:class:`Assessment`, :class:`TileResult`) and the heatmap.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._limits import check_pixels
from ._prepared import OverviewMeasure, PreparedImage, Preview
from ._tile_reader import TileReader
from .aggregation import aggregate
from .card import DeviceProfile
from .config import Config, EngineConfig
from .errors import InputError, NoTissueError, QualityGateError
from .inference import Inference
from .model import Model
from .profiles import (
    check_channels,
    intensity_high,
    nuclear_signal,
    scale_intensities,
)
from .quality import (
    QualityReport,
    effective_thresholds,
    gate,
    tile_saturation,
)
from .reader import open_image
from .tiling import Box, plan_tiles, tile_source_px
from .tissue import tissue_fraction, tissue_mask

__all__ = [
    "Assessment",
    "PreparedImage",
    "TileResult",
    "assess",
    "check_quality",
    "finish",
    "prepare",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileResult:
    box: Box  # (x0, y0, x1, y1) source pixels
    probability: float  # calibrated
    raw_probability: float
    tissue_fraction: float


@dataclass(eq=False)
class Assessment:
    """The engine's answer for one image (research use, not a diagnosis)."""

    path: str
    probability: float  # calibrated image probability
    raw_probability: float  # the same aggregation at temperature 1
    decision: bool  # tumour at the margin
    threshold: float
    tiles: list[TileResult]
    driving_tile: int
    heatmap: np.ndarray  # (H / scale, W / scale) float32 in [0, 1]
    heatmap_scale: float
    timings: dict[str, float]
    sha256: str
    shape: tuple[int, int, int]
    um_per_px: float
    um_per_px_source: str
    profile: str
    backend: str
    device: str
    precision: str
    aggregation: str
    model_digest: str
    synthetic_demo: bool
    preview: Preview | None = None  # the overview in the model's colours (preview_rgb)
    feature_mean: np.ndarray | None = None  # (K,) mean pooled CNN features over the tiles
    quality: QualityReport | None = None  # the gate's measurements (it passed)

    @property
    def seconds(self) -> float:
        return float(sum(self.timings.values()))

    @property
    def preview_rgb(self) -> np.ndarray | None:
        """(h, w, 3) uint8 overview behind the heatmap (drawn on first use)."""
        return None if self.preview is None else self.preview.rgb()


def _engine(config: Config | EngineConfig | None) -> EngineConfig:
    if config is None:
        return EngineConfig()
    return config.engine if isinstance(config, Config) else config


def _profile(model: Model, engine: EngineConfig) -> DeviceProfile:
    profile = model.card.device_profile
    if engine.default_profile is not None and engine.default_profile != profile.kind:
        logger.warning(
            "engine.default_profile=%s overrides the model card's profile %s",
            engine.default_profile,
            profile.kind,
        )
        profile = profile.model_copy(update={"kind": engine.default_profile})
    return profile


def prepare(
    image_path: str | os.PathLike[str], model: Model, config: Config | EngineConfig | None = None
) -> PreparedImage:
    """Read, check and plan the tiles of one image; they are read later (module docstring)."""
    engine = _engine(config)
    card = model.card
    profile = _profile(model, engine)
    started = time.perf_counter()
    source = open_image(
        image_path,
        max_pixels=engine.max_pixels,
        max_channels=engine.max_channels,
        region_read_min_pixels=engine.region_read_min_pixels,
        target_um_per_px=card.um_per_px,
    )
    try:
        prepared = _plan(source, image_path, model, engine, profile, started)
    except BaseException:
        source.close()
        raise
    logger.debug(
        "planned %d tiles (%d source px, level %d)",
        len(prepared.boxes),
        prepared.tile_px,
        prepared.level,
    )
    return prepared


def _plan(
    source: Any,
    image_path: str | os.PathLike[str],
    model: Model,
    engine: EngineConfig,
    profile: DeviceProfile,
    started: float,
) -> PreparedImage:
    """Overview, tissue mask and tile plan; the returned image owns ``source``."""
    card = model.card
    info = source.info
    height, width, channels = info.shape
    check_channels(channels, profile, where=str(image_path))
    um, um_source = _pixel_size(
        info.um_per_px, info.um_per_px_source, engine, profile, card.um_per_px
    )
    factor = max(1, math.ceil(max(height, width) / engine.heatmap_max_side_px))
    overview = source.overview(factor)  # (h, w, C) float32, raw intensities
    check_pixels(image_path, overview, info.dtype)  # NaN/inf, constant, out of range
    high = intensity_high(overview, profile, info.dtype)
    read_seconds = time.perf_counter() - started

    started = time.perf_counter()
    signal = nuclear_signal(scale_intensities(overview, high), profile)
    # a flat image is tissue if its signal is high in absolute terms (dtype range)
    absolute = nuclear_signal(
        scale_intensities(overview, _dtype_range(info.dtype, channels)), profile
    )
    mask = tissue_mask(signal, flat_is_tissue=float(absolute.mean()) > 0.1)
    tile_px = tile_source_px(card.input_size_px, card.um_per_px, um)
    plan = plan_tiles(height, width, tile_px, engine.tile_overlap_fraction)
    kept = []
    for footprint in plan.footprints:
        fraction = tissue_fraction(mask, plan.clip(footprint), factor)
        if fraction >= engine.min_tissue_fraction:
            kept.append((footprint, fraction))
    quality_started = time.perf_counter()
    saturated = [
        tile_saturation(absolute, mask, plan.clip(footprint), factor) for footprint, _ in kept
    ]
    quality_seconds = time.perf_counter() - quality_started
    if not kept:
        raise NoTissueError(
            f"{image_path}: no tile of {len(plan.footprints)} holds tissue "
            f"(engine.min_tissue_fraction={engine.min_tissue_fraction}); not assessed"
        )
    boxes = [plan.clip(f) for f, _ in kept]
    size = card.input_size_px
    return PreparedImage(
        path=str(image_path),
        boxes=boxes,
        footprints=[f for f, _ in kept],
        tissue_fractions=[fr for _, fr in kept],
        sha256=info.sha256,
        shape=info.shape,
        dtype=info.dtype,
        um_per_px=um,
        um_per_px_source=um_source,
        profile=profile.name,
        tile_px=tile_px,
        heatmap_scale=factor,
        preview=Preview(overview, profile, high),
        tile_size=size,
        normalisation=card.normalisation,
        level=info.level,
        timings={
            "read": read_seconds,
            "preprocess": time.perf_counter() - started - quality_seconds,
            "quality": quality_seconds,
        },
        overview_measure=OverviewMeasure(absolute, signal, mask, um * factor),
        quality_tiles=[{"saturated_fraction": s} for s in saturated],
        mask=mask,
        _reader=TileReader(source, boxes, profile, high, tile_px, size),
    )


def _dtype_range(dtype: str, channels: int) -> np.ndarray:
    kind = np.dtype(dtype)
    full = float(np.iinfo(kind).max) if np.issubdtype(kind, np.integer) else 1.0
    return np.full(channels, full, np.float32)


def _pixel_size(
    file_um: float | None,
    file_source: str | None,
    engine: EngineConfig,
    profile: DeviceProfile,
    model_um: float,
) -> tuple[float, str]:
    """File > config (engine.default_um_per_px) > profile default (else the model's own)."""
    if file_um is not None:
        return file_um, file_source or "tiff-resolution"
    if engine.default_um_per_px is not None:
        return engine.default_um_per_px, "config"
    return profile.default_um_per_px or model_um, "profile-default"


def finish(
    prepared: PreparedImage,
    inference: Inference | None,
    model: Model,
    config: Config | EngineConfig | None = None,
    *,
    backend: Any = None,
) -> Assessment:
    """Aggregate tile results, decide at the model's threshold, stitch the heatmap."""
    engine = _engine(config)
    count = len(prepared.boxes)
    if inference is None or len(inference) != count:
        got = 0 if inference is None else len(inference)
        raise InputError(f"{prepared.path}: {got} tile results for {count} tiles; not assessed")
    card = model.card
    prepared.measure_quality()  # unless the reader did already (timed in prepared.timings)
    started = time.perf_counter()
    report = check_quality(prepared, model, engine)
    quality_seconds = prepared.timings.get("quality", 0.0) + time.perf_counter() - started
    if not report.passed:
        raise QualityGateError(f"{prepared.path}: not assessable: {report.reason}", report)
    kept = list(report.tiles_kept)  # the tiles that failed are left out of the decision
    started = time.perf_counter()
    probabilities = inference.probabilities.numpy().astype(np.float64)[kept]
    raw = inference.raw_probabilities.numpy().astype(np.float64)[kept]
    probability, driving = aggregate(probabilities, engine.aggregation)
    raw_probability, _ = aggregate(raw, engine.aggregation)
    aggregate_seconds = time.perf_counter() - started
    started = time.perf_counter()
    footprints = [prepared.footprints[i] for i in kept]
    heatmap = stitch_heatmap(prepared, inference.cams[kept], probabilities, footprints)
    stitch_seconds = time.perf_counter() - started
    timings = {
        "read": prepared.timings.get("read", 0.0),
        "preprocess": prepared.timings.get("preprocess", 0.0),
        "quality": quality_seconds,
        "infer": inference.forward_seconds,
        "cam": inference.cam_seconds + stitch_seconds,
        "aggregate": aggregate_seconds,
    }
    return Assessment(
        path=prepared.path,
        probability=probability,
        raw_probability=raw_probability,
        decision=bool(probability >= card.threshold),
        threshold=card.threshold,
        tiles=[
            TileResult(box, float(p), float(r), fr)
            for box, p, r, fr in zip(
                [prepared.boxes[i] for i in kept],
                probabilities,
                raw,
                [prepared.tissue_fractions[i] for i in kept],
                strict=True,
            )
        ],
        driving_tile=driving,
        heatmap=heatmap,
        heatmap_scale=float(prepared.heatmap_scale),
        timings=timings,
        sha256=prepared.sha256,
        shape=prepared.shape,
        um_per_px=prepared.um_per_px,
        um_per_px_source=prepared.um_per_px_source,
        profile=prepared.profile,
        backend=getattr(backend, "name", inference.backend),
        device=getattr(backend, "device", inference.device),
        precision=getattr(backend, "precision", inference.precision),
        aggregation=engine.aggregation,
        model_digest=model.digest,
        synthetic_demo=card.synthetic_demo,
        preview=prepared.preview,
        feature_mean=(
            None if inference.pooled is None
            else inference.pooled.float().mean(dim=0).numpy().astype(np.float32)
        ),
        quality=report,
    )


def check_quality(
    prepared: PreparedImage, model: Model, config: Config | EngineConfig | None = None
) -> QualityReport:
    """The quality gate's report on a prepared image whose tiles were read (engine.quality)."""
    engine = _engine(config)
    thresholds = effective_thresholds(model.card.quality, engine.quality_overrides())
    return gate(
        prepared.measure_quality(), prepared.quality_tiles, prepared.tissue_fractions, thresholds
    )


def stitch_heatmap(
    prepared: PreparedImage,
    cams: torch.Tensor,
    probabilities: np.ndarray,
    footprints: list[Box] | None = None,
) -> np.ndarray:
    """Tile CAMs -> one (H / scale, W / scale) map in [0, 1].

    Each tile's CAM is divided by its own maximum (pytorch-grad-cam's per-image
    normalisation), weighted by the tile's calibrated probability, upsampled over the
    tile's footprint and combined by maximum where tiles overlap. A negative image
    therefore stays cool instead of showing its least-negative spot at full heat.
    """
    scale = prepared.heatmap_scale
    height, width = prepared.shape[:2]
    out = np.zeros((-(-height // scale), -(-width // scale)), np.float32)
    side = max(1, round(prepared.tile_px / scale))
    footprints = prepared.footprints if footprints is None else footprints
    for cam, p, (x0, y0, _, _) in zip(cams.float(), probabilities, footprints, strict=True):
        peak = float(cam.max())
        if peak <= 0.0 or p <= 0.0:
            continue
        up = F.interpolate(
            (cam / peak)[None, None], size=(side, side), mode="bilinear", align_corners=False
        )[0, 0].numpy() * float(p)
        top, left = y0 // scale, x0 // scale
        h, w = min(side, out.shape[0] - top), min(side, out.shape[1] - left)
        if h > 0 and w > 0:
            np.maximum(
                out[top : top + h, left : left + w],
                up[:h, :w],
                out=out[top : top + h, left : left + w],
            )
    return np.clip(out, 0.0, 1.0)


def infer_tiles(backend: Any, tiles: Any, batch_size: int) -> Inference:
    """Run ``backend.infer`` over tiles in batches of ``batch_size``; one joined Inference.

    ``tiles`` is a :class:`PreparedImage` (streamed: one chunk in memory at a time) or a
    tensor (T, 3, H, W), uint8 RGB or normalised float.
    """
    if isinstance(tiles, PreparedImage):
        with tiles:
            parts = [backend.infer(chunk) for chunk in tiles.iter_tiles(batch_size)]
    else:
        parts = [backend.infer(tiles[i : i + batch_size]) for i in range(0, len(tiles), batch_size)]
    return Inference.concat(parts)


def assess(
    image_path: str | os.PathLike[str],
    model: Model,
    config: Config | EngineConfig | None = None,
    backend: Any = None,
) -> Assessment:
    """``prepare`` + ``backend.infer`` (streamed, chunks of engine.batch_size) + ``finish``."""
    engine = _engine(config)
    if backend is None:
        from .backends import select_backend

        backend = select_backend(model, engine)
    prepared = prepare(image_path, model, engine)
    inference = infer_tiles(backend, prepared, engine.batch_size)
    return finish(prepared, inference, model, engine, backend=backend)
