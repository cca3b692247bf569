"""Benchmark sections that run in this process: forward floor, assess stages, Grad-CAM.

Every timing comes after warm-up calls that are not counted. On CUDA each timed call
ends with ``torch.cuda.synchronize()`` so wall time covers the GPU work.

Forward variants (section 1) are named by what they turn on, e.g.
``fp16+channels_last+cuda_graphs``: ``fp16`` (autocast), ``channels_last`` (NHWC
memory format for input and weights), ``compile`` (``torch.compile``, default mode;
compile time reported apart), ``cuda_graphs`` (one captured graph per batch size,
replayed with the input copied into its static buffer). The engine's own backends
(sections 2, 3, 5) use what ``engine/backends.py`` implements: torch-cpu fp32, and
torch-cuda with channels_last and fp16 autocast when ``engine.precision = "fp16"``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ._bench_stats import summarise

__all__ = ["ForwardVariant", "measure_assess", "measure_forward", "measure_gradcam",
           "measure_h2d"]


@dataclass(frozen=True)
class ForwardVariant:
    fp16: bool = False
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False

    @property
    def name(self) -> str:
        parts = ["fp16" if self.fp16 else "fp32"]
        parts += [n for n, on in (("channels_last", self.channels_last), ("compile", self.compile),
                                  ("cuda_graphs", self.cuda_graphs)) if on]
        return "+".join(parts)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _runner(module: torch.nn.Module, variant: ForwardVariant, device: torch.device,
            batch: int, size: int) -> tuple[Callable[[torch.Tensor], Any], float]:
    """A callable ``x (N,3,H,W) on device -> (logits, feature_map)`` and its set-up seconds."""
    started = time.perf_counter()
    net = copy.deepcopy(module).to(device).eval()
    if variant.channels_last:
        net = net.to(memory_format=torch.channels_last)
    forward = net.forward_features
    if variant.compile:
        forward = torch.compile(forward, dynamic=False)
    autocast = device.type == "cuda" and variant.fp16

    def plain(x: torch.Tensor) -> Any:
        if variant.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.float16, enabled=autocast):
            return forward(x)

    if not variant.cuda_graphs:
        with torch.inference_mode():
            plain(torch.zeros(batch, 3, size, size, device=device))  # compile/first-call cost
        _sync(device)
        return plain, time.perf_counter() - started
    if device.type != "cuda":
        raise ValueError("cuda_graphs needs --device cuda")
    static_in = torch.zeros(batch, 3, size, size, device=device)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):  # warm-up on a side stream before capture (CUDA graphs rule)
            plain(static_in)
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.inference_mode(), torch.cuda.graph(graph):
        static_out = plain(static_in)

    def replay(x: torch.Tensor) -> Any:
        static_in.copy_(x, non_blocking=True)
        graph.replay()
        return static_out

    _sync(device)
    return replay, time.perf_counter() - started


def measure_forward(module: torch.nn.Module, size: int, device: torch.device,
                    variant: ForwardVariant, batches: Sequence[int], *, repeats: int,
                    warmup: int) -> dict[str, Any]:
    """Per-tile forward time at each batch size (inputs already on the device)."""
    out: dict[str, Any] = {"variant": variant.name, "batches": {}}
    for batch in batches:
        try:
            run, setup = _runner(module, variant, device, batch, size)
        except torch.cuda.OutOfMemoryError:
            out["batches"][str(batch)] = {"error": "out of GPU memory"}
            break
        x = torch.randn(batch, 3, size, size, device=device, generator=None)
        times = []
        with torch.inference_mode():
            for i in range(warmup + repeats):
                _sync(device)
                started = time.perf_counter()
                run(x)
                _sync(device)
                if i >= warmup:
                    times.append((time.perf_counter() - started) / batch)
        stats = summarise(times)
        stats["setup_seconds"] = setup
        stats["tiles_per_second"] = 1.0 / stats["median"]
        out["batches"][str(batch)] = stats
        del run, x
        if device.type == "cuda":
            torch.cuda.empty_cache()
    measured = {b: s for b, s in out["batches"].items() if "median" in s}
    if measured:
        best = min(measured, key=lambda b: measured[b]["median"])
        out["best_batch"] = int(best)
        out["batch1_per_tile"] = measured.get("1")
        out["best_per_tile"] = measured[best]
    return out


def measure_h2d(size: int, batch: int, device: torch.device, *, repeats: int) -> dict[str, Any]:
    """Host-to-device copy per tile, pageable vs pinned host memory (CUDA only)."""
    host = torch.randn(batch, 3, size, size)
    pinned = host.pin_memory()
    out = {}
    for name, source in (("pageable", host), ("pinned", pinned)):
        times = []
        for i in range(repeats + 2):
            _sync(device)
            started = time.perf_counter()
            source.to(device, non_blocking=True)
            _sync(device)
            if i >= 2:
                times.append((time.perf_counter() - started) / batch)
        out[name] = summarise(times)
    return out


def measure_assess(paths: Sequence[str], model: Any, engine_config: Any, backend: Any, *,
                   warmup: int) -> dict[str, Any]:
    """``assess`` per image, by stage: prepare -> backend infer -> finish, as the engine runs it."""
    from marginwatch.engine.assessment import finish, infer_tiles, prepare

    stages: dict[str, list[float]] = {k: [] for k in
                                      ("read", "preprocess", "infer", "cam", "aggregate")}
    totals, cam_maps, floors, tiles = [], [], [], []
    for index, path in enumerate(paths):
        started = time.perf_counter()
        prepared = prepare(path, model, engine_config)
        count = len(prepared.boxes)
        inference = infer_tiles(backend, prepared, engine_config.batch_size)  # streamed
        assessment = finish(prepared, inference, model, engine_config, backend=backend)
        total = time.perf_counter() - started
        if index < warmup:
            continue
        for key in stages:
            stages[key].append(assessment.timings[key])
        totals.append(total)
        cam_maps.append(inference.cam_seconds)
        t = assessment.timings
        floors.append(t["read"] + t["preprocess"] + t["infer"])
        tiles.append(count)
    return {
        "images": len(totals),
        "tiles_per_image": summarise(tiles),
        "stages": {k: summarise(v) for k, v in stages.items()},
        "cam_map_only": summarise(cam_maps),
        "read_preprocess_infer": summarise(floors),
        "total": summarise(totals),
    }


def _normalise(cam: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's scale_cam_image: subtract the minimum, divide by the maximum."""
    cam = cam - cam.min()
    return cam / (cam.max() + 1e-7)


def _compare(ours: torch.Tensor, theirs: np.ndarray) -> tuple[float, float] | None:
    """(Pearson r, max |difference|) of our (h, w) CAM upsampled + normalised vs theirs (H, W)."""
    up = F.interpolate(ours[None, None].float().cpu(), size=theirs.shape, mode="bilinear",
                       align_corners=False)[0, 0].numpy()
    up = _normalise(up)
    if up.std() == 0 or theirs.std() == 0:
        return None
    return float(np.corrcoef(up.ravel(), theirs.ravel())[0, 1]), float(np.abs(up - theirs).max())


def measure_gradcam(model: Any, backend: Any, tiles: torch.Tensor, device: torch.device, *,
                    warmup: int) -> dict[str, Any]:
    """marginwatch's forward + exact CAM vs pytorch-grad-cam GradCAM, tile by tile (batch 1).

    Correlation: marginwatch's CAM upsampled (bilinear) to the input size and min-max
    normalised, as pytorch-grad-cam does with its own, against pytorch-grad-cam's map.
    """
    from marginwatch.engine.inference import TUMOUR, class_activation_maps
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    module = copy.deepcopy(model.torch_module()).to(device).eval()
    twin = copy.deepcopy(module)
    layer = module.features
    targets = [ClassifierOutputTarget(TUMOUR)]
    mw_total, mw_forward, mw_cam, pgc_total, corr, max_diff = [], [], [], [], [], []
    compared_other = 0
    with GradCAM(model=module, target_layers=[layer]) as cam:
        for index in range(len(tiles)):
            tile = tiles[index : index + 1]
            _sync(device)
            started = time.perf_counter()
            inference = backend.infer(tile)
            mw_seconds = time.perf_counter() - started
            tile_dev = tile.to(device).requires_grad_(True)
            _sync(device)
            started = time.perf_counter()
            theirs = cam(input_tensor=tile_dev, targets=targets)[0]  # (H, W) in [0, 1]
            _sync(device)
            pgc_seconds = time.perf_counter() - started
            if index < warmup:
                continue
            mw_total.append(mw_seconds)
            mw_forward.append(inference.forward_seconds)
            mw_cam.append(inference.cam_seconds)
            pgc_total.append(pgc_seconds)
            pair = _compare(inference.cams[0], theirs)
            if pair is None:
                # A constant map (all zero after ReLU: common with random weights) has no
                # correlation; compare the other class's maps on the same tile instead.
                other = 1 - TUMOUR
                with torch.no_grad():  # the unhooked twin: GradCAM's hooks stay out of it
                    _, feature_map = twin.forward_features(tile.to(device))
                    ours_other = class_activation_maps(feature_map,
                                                       twin.classifier.weight[other])
                theirs_other = cam(input_tensor=tile_dev,
                                   targets=[ClassifierOutputTarget(other)])[0]
                pair = _compare(ours_other[0].cpu(), theirs_other)
                compared_other += 1
            if pair is not None:
                corr.append(pair[0])
                max_diff.append(pair[1])
    cam_fraction = [c / f for c, f in zip(mw_cam, mw_forward, strict=True) if f > 0]
    ratios = [p / m for p, m in zip(pgc_total, mw_total, strict=True) if m > 0]
    return {
        "tiles": len(mw_total),
        "marginwatch_forward_plus_cam": summarise(mw_total),
        "marginwatch_forward": summarise(mw_forward),
        "marginwatch_cam_map": summarise(mw_cam),
        "pytorch_grad_cam": summarise(pgc_total),
        "cam_fraction_of_forward": summarise(cam_fraction),
        "speedup_vs_pytorch_grad_cam": summarise(ratios),
        "correlation": summarise(corr),
        "correlation_tiles_other_class": compared_other,
        "max_abs_difference": summarise(max_diff),
    }
