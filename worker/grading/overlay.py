"""Render a Grad-CAM heatmap over the fundus it explains, as PNG bytes: no TensorFlow here.

The PNG carries no timestamp or other metadata, so equal inputs give equal bytes and an
overlay can be stored under the hash of its content.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib import colormaps
from PIL import Image

# Pixels darker than this (brightest channel) are the black surround of the field of view;
# heat fades in over the next few levels so the border stays black, not smeared colour.
_BORDER_LEVEL = 10.0
_BORDER_RAMP = 20.0
_PNG_COMPRESS_LEVEL = 6


def render_overlay(
    pixels: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.45, colormap: str = "jet"
) -> bytes:
    """PNG of ``heatmap`` (h x w, in [0, 1]) coloured over ``pixels`` (H x W x 3 uint8).

    Opacity grows with the heat, up to ``alpha``, so cold regions show the fundus as it is.
    """
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(
            f"pixels must be an H x W x 3 uint8 array, not {pixels.dtype} {pixels.shape}"
        )
    if heatmap.ndim != 2 or 0 in heatmap.shape:
        raise ValueError(f"heatmap must be a non-empty 2-D array, not shape {heatmap.shape}")
    heat = heatmap.astype(np.float32)
    if not np.isfinite(heat).all() or heat.min() < 0.0 or heat.max() > 1.0:
        raise ValueError("heatmap values must be finite and lie in [0, 1]")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], not {alpha}")
    if colormap not in colormaps:
        raise ValueError(f"unknown matplotlib colormap {colormap!r}")

    height, width = pixels.shape[:2]
    if heat.shape != (height, width):
        resized = Image.fromarray(heat).resize((width, height), Image.Resampling.BILINEAR)
        heat = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    image = pixels.astype(np.float32)
    in_view = np.clip((image.max(axis=2) - _BORDER_LEVEL) / _BORDER_RAMP, 0.0, 1.0)
    opacity = (alpha * heat * in_view)[..., None]
    colours = colormaps[colormap](heat)[..., :3].astype(np.float32) * 255.0
    blended = np.rint(image * (1.0 - opacity) + colours * opacity).astype(np.uint8)

    buffer = io.BytesIO()
    Image.fromarray(blended).save(buffer, format="PNG", compress_level=_PNG_COMPRESS_LEVEL)
    return buffer.getvalue()
