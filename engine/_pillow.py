"""PNG, JPEG and BMP through Pillow: header checked, then decoded whole.

Pillow decodes these formats whole (no tiles); its own decompression-bomb guard stays
on and is reported as :class:`ImageTooLargeError` like ours. These files carry no
trusted physical pixel size, so the config or device profile supplies it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from ._limits import check_declared
from .errors import ImageTooLargeError, UnreadableImageError, UnsupportedImageError
from .reader import ArraySource, ImageInfo, ImageSource

__all__ = ["check_pillow_header", "open_pillow"]

# Pillow mode -> (channels, dtype) it decodes to; "convert" modes become RGB first.
_MODES = {
    "1": (1, "uint8"),
    "L": (1, "uint8"),
    "LA": (1, "uint8"),  # alpha dropped
    "I;16": (1, "uint16"),
    "I;16L": (1, "uint16"),
    "I;16B": (1, "uint16"),
    "F": (1, "float32"),
    "RGB": (3, "uint8"),
    "RGBA": (4, "uint8"),
    "P": (3, "uint8"),
    "PA": (4, "uint8"),
    "CMYK": (3, "uint8"),
    "YCbCr": (3, "uint8"),
}


def check_pillow_header(
    file: Path,
    kind: str,
    *,
    max_pixels: int,
    max_channels: int,
    region_read_min_pixels: int,
    target_um_per_px: float | None,
) -> None:
    """Read only the header from the file and check what it declares (nothing decoded)."""
    del region_read_min_pixels, target_um_per_px
    image = _open_header(file, file, kind)
    with image:
        _check(file, image, kind, max_pixels=max_pixels, max_channels=max_channels)


def _open_header(file: Path, handle: BinaryIO | Path, kind: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(handle, formats=[kind])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"{file}: {exc}; nothing was decoded") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImageError(
            f"{file}: {kind} header is corrupt or truncated ({exc})"
        ) from exc


def _check(
    file: Path, image: Image.Image, kind: str, *, max_pixels: int, max_channels: int
) -> tuple[int, int]:
    """(height, width) once the declared size and mode pass the limits."""
    width, height = image.size
    mode = image.mode
    if mode not in _MODES:
        raise UnsupportedImageError(
            f"{file}: {kind} pixel mode {mode!r}; expected 8/16-bit grey, RGB or RGBA"
        )
    channels, dtype = _MODES[mode]
    check_declared(
        file, (height, width, channels), dtype, max_pixels=max_pixels, max_channels=max_channels
    )
    return height, width


def open_pillow(
    file: Path,
    handle: BinaryIO | Path,
    kind: str,
    *,
    max_pixels: int,
    max_channels: int,
    region_read_min_pixels: int,
    target_um_per_px: float | None,
) -> ImageSource:
    del region_read_min_pixels, target_um_per_px  # whole-image formats, no pyramids
    image = _open_header(file, handle, kind)
    with image:
        height, width = _check(file, image, kind, max_pixels=max_pixels,
                               max_channels=max_channels)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image.load()
                array = _to_array(image)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise UnreadableImageError(
                f"{file}: {kind} pixel data is corrupt or truncated ({exc})"
            ) from exc
    info = ImageInfo(
        path=str(file), format=kind, shape=(height, width, array.shape[2]), dtype=str(array.dtype)
    )
    return ArraySource(info, array)


def _to_array(image: Image.Image) -> np.ndarray:
    """Decoded image -> (H, W, C) in the dtype of :data:`_MODES`."""
    mode = image.mode
    if mode in ("P", "CMYK", "YCbCr"):
        image = image.convert("RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    elif mode == "1":
        image = image.convert("L")
    elif mode == "LA":
        image = image.getchannel("L")
    array = np.asarray(image)
    if array.dtype.byteorder == ">" or mode.startswith("I;16"):
        array = array.astype(np.uint16)
    if array.ndim == 2:
        array = array[..., None]
    return array
