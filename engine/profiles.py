"""Device profiles: how an export's channels become the model's RGB (docs/architecture.md).

- ``grey``: one fluorescence channel (Histolog, acridine orange) through a purple
  look-up: background white, signal towards haematoxylin purple.
- ``reflectance+fluorescence`` (VivaScope 2500): digital H&E, either Gareau's linear
  formula ``RGB = 1 - F(1 - H) - R(1 - E)`` or a Beer-Lambert (exponential) variant.
- ``rgb``: already digital H&E, used as is (alpha dropped).

All arrays are ``(H, W, C)`` on input and ``(H, W, 3)`` float32 in [0, 1] on output.
Intensities are first scaled to [0, 1] (:func:`scale_intensities`): by the dtype's
range, or for fluorescence by a high percentile of the whole image (its overview),
never below 2 % of the dtype's range so that an empty slide stays dark.
"""

from __future__ import annotations

import numpy as np

from .card import GAREAU_EOSIN_RGB, GAREAU_HAEMATOXYLIN_RGB, DeviceProfile
from .errors import UnsupportedImageError

__all__ = [
    "background_rgb",
    "beer_lambert",
    "check_channels",
    "gareau_linear",
    "grey_to_rgb",
    "intensity_high",
    "nuclear_signal",
    "scale_intensities",
    "to_rgb",
]

_MIN_HIGH_FRACTION = 0.02


def _dtype_max(dtype: np.dtype) -> float:
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


def intensity_high(array: np.ndarray, profile: DeviceProfile, dtype: np.dtype | str) -> np.ndarray:
    """Per-channel value that maps to 1.0, shape (C,); ``array`` (H, W, C), e.g. the overview."""
    dtype = np.dtype(dtype)
    full = _dtype_max(dtype)
    channels = array.shape[2]
    if profile.scaling == "dtype-range":
        return np.full(channels, full, np.float32)
    flat = np.nan_to_num(array.reshape(-1, channels).astype(np.float32))
    high = np.percentile(flat, profile.percentile_high, axis=0)
    return np.maximum(high, _MIN_HIGH_FRACTION * full).astype(np.float32)


def scale_intensities(array: np.ndarray, high: np.ndarray) -> np.ndarray:
    """(H, W, C) raw -> (H, W, C) float32 in [0, 1], dividing channel c by ``high[c]``."""
    scaled = np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return np.clip(scaled / np.asarray(high, np.float32), 0.0, 1.0)


def grey_to_rgb(
    fluorescence: np.ndarray, haematoxylin_rgb: tuple[float, float, float] = GAREAU_HAEMATOXYLIN_RGB
) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3): white background, signal towards purple."""
    h = np.asarray(haematoxylin_rgb, np.float32)
    return np.clip(1.0 - fluorescence[..., None] * (1.0 - h), 0.0, 1.0).astype(np.float32)


def gareau_linear(
    fluorescence: np.ndarray,
    reflectance: np.ndarray,
    haematoxylin_rgb: tuple[float, float, float] = GAREAU_HAEMATOXYLIN_RGB,
    eosin_rgb: tuple[float, float, float] = GAREAU_EOSIN_RGB,
) -> np.ndarray:
    """Gareau's digital H&E: ``RGB = 1 - F (1 - H) - R (1 - E)``; (H, W) each -> (H, W, 3)."""
    h = np.asarray(haematoxylin_rgb, np.float32)
    e = np.asarray(eosin_rgb, np.float32)
    rgb = 1.0 - fluorescence[..., None] * (1.0 - h) - reflectance[..., None] * (1.0 - e)
    return np.clip(rgb, 0.0, 1.0).astype(np.float32)


def beer_lambert(
    fluorescence: np.ndarray,
    reflectance: np.ndarray,
    haematoxylin_rgb: tuple[float, float, float] = GAREAU_HAEMATOXYLIN_RGB,
    eosin_rgb: tuple[float, float, float] = GAREAU_EOSIN_RGB,
    strength: float = 2.5,
) -> np.ndarray:
    """Exponential variant: ``RGB = exp(-k (F (1 - H) + R (1 - E)))`` (stains absorb)."""
    h = np.asarray(haematoxylin_rgb, np.float32)
    e = np.asarray(eosin_rgb, np.float32)
    density = fluorescence[..., None] * (1.0 - h) + reflectance[..., None] * (1.0 - e)
    return np.exp(-strength * density).astype(np.float32)


def check_channels(channels: int, profile: DeviceProfile, where: str = "image") -> None:
    """Refuse input whose channel count is not the kind the model was trained on."""
    ok = {
        "grey": channels == 1,
        "reflectance+fluorescence": channels == 2,
        "rgb": channels in (3, 4),
    }[profile.kind]
    if not ok:
        expected = {
            "grey": "1 (grey fluorescence)",
            "reflectance+fluorescence": "2 (reflectance + fluorescence)",
            "rgb": "3 or 4 (RGB, RGBA)",
        }[profile.kind]
        raise UnsupportedImageError(
            f"{where}: {channels} channel(s); the model's device profile {profile.name!r} "
            f"expects {expected}"
        )


def to_rgb(
    array: np.ndarray, profile: DeviceProfile, *, high: np.ndarray | None = None
) -> np.ndarray:
    """(H, W, C) raw or scaled -> (H, W, 3) float32 in [0, 1] by ``profile``.

    ``high`` is the per-channel scaling from :func:`intensity_high`; when omitted it is
    computed from ``array`` itself.
    """
    if array.ndim == 2:
        array = array[..., None]
    check_channels(array.shape[2], profile)
    if high is None:
        high = intensity_high(array, profile, array.dtype)
    scaled = scale_intensities(array, high)
    if profile.kind == "grey":
        return grey_to_rgb(scaled[..., 0], profile.haematoxylin_rgb)
    if profile.kind == "rgb":
        return np.ascontiguousarray(scaled[..., :3])
    fluorescence = scaled[..., profile.fluorescence_channel]
    reflectance = scaled[..., profile.reflectance_channel]
    if profile.staining == "beer-lambert":
        return beer_lambert(
            fluorescence,
            reflectance,
            profile.haematoxylin_rgb,
            profile.eosin_rgb,
            profile.beer_lambert_strength,
        )
    return gareau_linear(fluorescence, reflectance, profile.haematoxylin_rgb, profile.eosin_rgb)


def nuclear_signal(scaled: np.ndarray, profile: DeviceProfile) -> np.ndarray:
    """(H, W, C) scaled to [0, 1] -> (H, W) signal that is high on tissue (for the mask)."""
    if profile.kind == "grey":
        return scaled[..., 0]
    if profile.kind == "reflectance+fluorescence":
        return scaled[..., profile.fluorescence_channel]
    return 1.0 - scaled[..., :3].mean(axis=2)  # digital H&E: tissue is darker than glass


def background_rgb(profile: DeviceProfile) -> np.ndarray:
    """RGB (3,) of "no tissue", used to pad tiles that overhang the image."""
    if profile.kind == "rgb":
        return np.ones(3, np.float32)
    zeros = np.zeros((1, 1, profile.channels), np.float32)
    return to_rgb(zeros, profile, high=np.ones(profile.channels, np.float32))[0, 0]
