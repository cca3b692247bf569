"""Contact sheet of synthetic FCM examples (docs/synth-contact-sheet.png).

    python -m marginwatch.tools.synth_sheet docs/synth-contact-sheet.png

Rows: kinds of image at both centres. Columns: digital H&E (rgb profile), a full
resolution crop of it, the grey fluorescence (grey profile) and the two-channel
export shown as false colour (reflectance magenta, fluorescence green). Each row
is the same tissue under every profile (same seed).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np

from .synth import generate_image

__all__ = ["render_contact_sheet"]

ROWS = (
    ("development", "benign", "benign", "benign: large branched glands, corpora amylacea"),
    ("development", "benign", "atrophy", "benign mimic: atrophy (small glands, flat layer)"),
    ("development", "tumour", "tumour-margin", "tumour at the inked edge"),
    ("development", "tumour", "tumour-focal", "small tumour focus at the edge"),
    ("development", "benign", "tumour-inside", "negative margin: tumour away from the edge"),
    ("external", "tumour", "tumour-margin", "external centre: tumour at the edge"),
    ("external", "benign", "benign", "external centre: benign"),
)


def _stretch(channel: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(channel, [0.5, 99.7])
    return np.clip((channel.astype(np.float32) - lo) / max(hi - lo, 1.0), 0, 1)


def _crop_box(mask: np.ndarray, size: int, crop: int) -> tuple[int, int]:
    if mask.any():
        ys, xs = np.nonzero(mask)
        cy, cx = int(np.median(ys)), int(np.median(xs))
    else:
        cy = cx = size // 2
    y0 = int(np.clip(cy - crop // 2, 0, size - crop))
    x0 = int(np.clip(cx - crop // 2, 0, size - crop))
    return y0, x0


def render_contact_sheet(path: str | Path, *, seed: int = 11, size_px: int = 1024) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    crop = 320
    fig, axes = plt.subplots(len(ROWS), 4, figsize=(16, 4.1 * len(ROWS)), dpi=100)
    for row, (centre, label, kind, title) in enumerate(ROWS):
        images = {
            p: generate_image(
                np.random.default_rng([seed, row]),
                label,
                kind=kind,
                centre=centre,
                profile=p,
                size_px=size_px,
            )
            for p in ("rgb", "grey", "reflectance+fluorescence")
        }
        rgb = images["rgb"].pixels
        y0, x0 = _crop_box(images["rgb"].tumour_mask, rgb.shape[0], crop)
        two = images["reflectance+fluorescence"].pixels
        false = np.zeros(two.shape[:2] + (3,), np.float32)
        r, f = _stretch(two[..., 0]), _stretch(two[..., 1])
        false[..., 0], false[..., 1], false[..., 2] = r, f, r  # (H, W, 3): magenta R, green F
        um = images["rgb"].um_per_px
        panels = [
            (rgb, f"{title}\n{centre}, {um:g} um/px, label {label}"),
            (rgb[y0 : y0 + crop, x0 : x0 + crop], f"crop {crop * um:.0f} um (digital H&E)"),
            (_stretch(images["grey"].pixels), "grey: acridine-orange fluorescence"),
            (false, "reflectance (magenta) + fluorescence (green)"),
        ]
        for col, (img, text) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(
                img,
                cmap="gray" if img.ndim == 2 else None,
                interpolation="lanczos" if col != 1 else "nearest",
            )
            ax.set_title(text, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].add_patch(plt.Rectangle((x0, y0), crop, crop, fill=False, ec="yellow", lw=1))
    fig.suptitle("marginwatch synthetic FCM (synthetic data, research use only)", fontsize=13)
    fig.tight_layout()
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    from PIL import Image

    # 256-colour palette keeps the committed PNG small (about 1-2 MB instead of 8)
    Image.open(buffer).convert("RGB").quantize(256, dither=Image.Dither.NONE).save(
        path, optimize=True
    )
    return path


if __name__ == "__main__":  # pragma: no cover - a documentation helper
    render_contact_sheet(sys.argv[1] if len(sys.argv) > 1 else "docs/synth-contact-sheet.png")
