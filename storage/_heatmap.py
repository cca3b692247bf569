"""Heatmap PNG bytes, through ``marginwatch.engine.render`` when it is there.

Storage keeps a heatmap as a 16-bit grey PNG plus a scale. The engine's ``render``
module (no torch) owns that encoding; until it exists this falls back to the same
format written with Pillow, so stored bytes do not depend on which path wrote them.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

__all__ = ["encode_heatmap", "overlay_png"]


def encode_heatmap(heatmap: Any) -> bytes:
    """(H, W) float map in [0, 1] -> 16-bit grey PNG bytes."""
    try:
        from marginwatch.engine.render import encode_heatmap_png
    except ImportError:
        encode_heatmap_png = None
    array = np.asarray(heatmap, dtype=np.float32)
    if encode_heatmap_png is not None:
        return bytes(encode_heatmap_png(array))
    from PIL import Image

    if array.ndim != 2:
        raise ValueError(f"heatmap must be (H, W); got shape {array.shape}")
    grey = np.round(np.clip(array, 0.0, 1.0) * 65535.0).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG")
    return buffer.getvalue()


def overlay_png(heatmap_png: bytes) -> bytes:
    """The stored heatmap as a coloured overlay PNG (engine.render), else the raw PNG."""
    try:
        from marginwatch.engine.render import decode_heatmap_png, heatmap_overlay_png
    except ImportError:
        return heatmap_png
    return bytes(heatmap_overlay_png(decode_heatmap_png(heatmap_png)))
