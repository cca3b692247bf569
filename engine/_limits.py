"""Checks of a declared image shape and dtype, made before any pixel is decoded."""

from __future__ import annotations

from pathlib import Path

from .errors import ImageTooLargeError, UnsupportedImageError

__all__ = ["check_declared"]

SUPPORTED_DTYPES = ("uint8", "uint16", "float32")


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
