"""Any decoded PIL image as 8-bit RGB: the one conversion that preprocessing, training,
evaluation and inference all apply, so a model never sees a file one way when trained and
another way when served.

- ``RGB`` is returned as is.
- Alpha is composited on white: ``RGBA``, ``LA``, ``PA`` (and premultiplied ``RGBa``,
  ``La``), and a colour key (PNG ``tRNS``: ``info["transparency"]``) on ``P``, ``L``,
  ``RGB``, ``I;16`` or ``I`` pixels.
- 16-bit grey (``I;16*``) is scaled ``v8 = round(v16 / 257)`` (full range, never clipped);
  32-bit ``I`` likewise when its values fit 0..65535, else min-max scaled; ``F`` is taken as
  0..1 or 0..255 when it fits one of them, else min-max scaled.
- Every other mode (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ...) goes through PIL's own
  ``convert("RGB")``; a mode PIL cannot convert raises :class:`UnsupportedModeError`.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

WHITE = (255, 255, 255)
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
HIGH_BIT_DEPTH = ("I", "F")  # mode prefixes: I, I;16, I;16B, I;16L, I;16N, F


class UnsupportedModeError(ValueError):
    """PIL decoded the image but it has no RGB conversion."""


def scale_to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """High-bit-depth grey pixels → uint8: 16-bit by /257, others by range."""
    if mode.startswith("I;16"):
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if mode == "F":
        values = np.nan_to_num(array.astype(np.float64))
        lo, hi = float(values.min()), float(values.max())
        if lo >= 0.0 and hi <= 1.0:
            values = values * 255.0
        elif not (lo >= 0.0 and hi <= 255.0):
            values = (values - lo) * 255.0 / max(hi - lo, 1e-12)
        return np.round(values).astype(np.uint8)
    array = array.astype(np.int64)
    lo, hi = int(array.min()), int(array.max())
    if lo >= 0 and hi <= 65535:
        return ((array + 128) // 257).astype(np.uint8)
    span = max(hi - lo, 1)
    return ((array - lo) * 255 // span).astype(np.uint8)


def composite_on_white(image: Image.Image) -> Image.Image:
    """An image with alpha (or a colour key PIL turns into alpha) over a white background."""
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _high_bit_depth_to_rgb(image: Image.Image) -> Image.Image:
    """Scaled to 8 bits; pixels equal to a colour key (``info["transparency"]``) become white."""
    values = np.asarray(image)
    grey = scale_to_uint8(values, image.mode)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    key = image.info.get("transparency")  # a grey value for these modes
    if key is not None:
        rgb[values == key] = WHITE
    return Image.fromarray(rgb, "RGB")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB (alpha on white, 16-bit scaled, not clipped)."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode.startswith(HIGH_BIT_DEPTH):
        return _high_bit_depth_to_rgb(image)
    if mode in ALPHA_MODES or "transparency" in image.info:
        return composite_on_white(image)
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise UnsupportedModeError(f"cannot convert mode {mode} to RGB: {error}") from error
