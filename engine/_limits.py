"""Checks before the model sees an image: the declared shape and dtype (before any pixel
is decoded), then the pixel values themselves (NaN/inf, constant, far out of range)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ImageTooLargeError, InvalidPixelsError, UnsupportedImageError

__all__ = ["FLOAT_RANGE", "check_declared", "check_pixels"]

SUPPORTED_DTYPES = ("uint8", "uint16", "float32")
#: float images are intensities in [0, 1]; block means outside this are no measurement.
FLOAT_RANGE = (-0.5, 1.5)


def check_declared(
    file: Path,
    shape: tuple[int, int, int],
    dtype: str,
    *,
    max_pixels: int,
    max_channels: int,
    what: str = "",
) -> None:
    """Refuse a declared (H, W, C) / dtype that is too large or not handled."""
    height, width, channels = shape
    where = f"{file}{what}"
    if height * width > max_pixels:
        raise ImageTooLargeError(
            f"{where}: {width}x{height} = {width * height:,} pixels exceeds "
            f"engine.max_pixels={max_pixels:,}; nothing was decoded"
        )
    if height < 1 or width < 1:
        raise UnsupportedImageError(f"{where}: declares an empty {width}x{height} image")
    if channels > max_channels or channels < 1:
        raise UnsupportedImageError(
            f"{where}: {channels} channels; expected 1 to {max_channels} "
            "(grey, reflectance+fluorescence or RGB)"
        )
    if dtype not in SUPPORTED_DTYPES:
        raise UnsupportedImageError(
            f"{where}: pixel type {dtype}; expected one of {', '.join(SUPPORTED_DTYPES)}"
        )


def check_pixels(where: str | Path, overview: np.ndarray, dtype: str) -> None:
    """Refuse pixels the model must never see, from the image's block-mean overview.

    ``overview`` is ``(h, w, C)`` float32, each value the mean of a block of source
    pixels, so a NaN or inf anywhere in the image shows in it. Refused (not assessable,
    never a result): NaN or infinite values, an image of one constant value, and float
    images whose values lie far outside the expected ``FLOAT_RANGE``.
    """
    finite = np.isfinite(overview)
    if not finite.all():
        nan = int(np.isnan(overview).sum())
        inf = int(overview.size - finite.sum() - nan)
        raise InvalidPixelsError(
            f"{where}: pixel values include NaN ({nan} block(s)) or infinity ({inf} "
            "block(s)); expected finite intensities"
        )
    low, high = float(overview.min()), float(overview.max())
    if low == high:
        raise InvalidPixelsError(
            f"{where}: every pixel has the same value ({low:g}); a blank or saturated "
            "image is not assessable"
        )
    floating = np.issubdtype(np.dtype(dtype), np.floating)
    if floating and (low < FLOAT_RANGE[0] or high > FLOAT_RANGE[1]):
        raise InvalidPixelsError(
            f"{where}: {dtype} values range {low:.4g} to {high:.4g}; expected intensities "
            f"in 0 to 1 (refused outside {FLOAT_RANGE[0]} to {FLOAT_RANGE[1]})"
        )
