"""Decoding fundus photographs: pure functions from untrusted bytes to an upright RGB image.

What a model does with the image afterwards lives in :mod:`common.preprocessing`.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from common.regions import largest_region

MIN_SIDE = 32
FIELD_OF_VIEW_THRESHOLD = 20  # 8-bit luminance separating the fundus disc from the black frame
# MPO (a JPEG with extra pictures, as many cameras write) decodes its first picture as JPEG.
_DRAFTABLE_FORMATS = ("JPEG", "MPO")


@dataclass(frozen=True)
class ImageDecodeError(Exception):
    """An image that cannot be graded for a reason the submitter can act on."""

    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def decode_image(data: bytes, *, max_pixels: int, draft_size: int | None = None) -> Image.Image:
    """Decode bytes into an upright 8-bit RGB image, or raise :class:`ImageDecodeError`.

    Multi-frame files (animated GIF, APNG and WebP, multi-page TIFF, MPO) are graded on
    their first frame alone: it is the frame every viewer shows, the one whose size the
    pixel limit checks, and the later frames are never decoded.

    ``draft_size`` lets the JPEG decoder downscale by a power of two while decoding, which
    is far cheaper than decoding 12 megapixels and resizing afterwards.
    """
    if not data:
        raise ImageDecodeError("empty_file", "the file is empty")
    try:
        with warnings.catch_warnings():
            # Pillow warns from its own limit (``Image.MAX_IMAGE_PIXELS``, which the worker
            # sets to ``max_pixels``); ``max_pixels`` is the limit that applies, checked below
            # before any pixel is decoded. Beyond twice Pillow's limit it refuses outright,
            # which is still "too many pixels".
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            # Explicit, because the pixel limit below is checked against this frame only.
            image.seek(0)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    "too_many_pixels",
                    f"{width}x{height} exceeds the limit of {max_pixels} pixels",
                )
            if draft_size and image.format in _DRAFTABLE_FORMATS:
                image.draft("RGB", (draft_size, draft_size))
            image.load()
            # A new single-frame image, detached from the file's frame sequence.
            image = ImageOps.exif_transpose(image)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError("too_many_pixels", str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not_an_image", "not a recognised image format") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError("corrupt_image", f"the image data is damaged: {exc}") from exc
    if min(image.size) < MIN_SIDE:
        raise ImageDecodeError(
            "too_small", f"{image.size[0]}x{image.size[1]} is below {MIN_SIDE} pixels a side"
        )
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any mode (grayscale, 16-bit, palette, alpha, CMYK) to 8-bit RGB."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = float(array.max()) or 1.0
        scaled = np.clip(array * (255.0 / max(peak, 255.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def field_of_view_box(image: Image.Image) -> tuple[int, int, int, int]:
    """Bounding box of the bright fundus disc; the whole image when none stands out.

    The disc is the largest bright region, as the quality check sees it, so text burnt
    into a corner or a glint outside the disc does not widen the crop.
    """
    small = image.convert("L")
    small.thumbnail((256, 256))
    mask = largest_region(np.asarray(small) > FIELD_OF_VIEW_THRESHOLD)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size < 8 or cols.size < 8:
        return (0, 0, image.width, image.height)
    scale_x = image.width / small.width
    scale_y = image.height / small.height
    return (
        int(cols[0] * scale_x),
        int(rows[0] * scale_y),
        min(image.width, int(np.ceil((cols[-1] + 1) * scale_x))),
        min(image.height, int(np.ceil((rows[-1] + 1) * scale_y))),
    )
