"""Decoding fundus photographs: pure functions from untrusted bytes to an upright RGB image.

What a model does with the image afterwards lives in :mod:`common.imaging.preprocessing`.
"""

from __future__ import annotations

import io
import math
import traceback
import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from common.dicom_header import is_dicom
from common.imaging.field_of_view import BAR_MIN_LEVEL, edge_bars, field_of_view_region
from common.imaging.pixel_budget import PixelBudget

MIN_SIDE = 32
FIELD_OF_VIEW_THRESHOLD = 20  # 8-bit luminance separating the fundus disc from the black frame
THUMBNAIL_SIDE = 256  # the crop's field of view is found on a thumbnail this big
THUMBNAIL_RESAMPLING = Image.Resampling.BICUBIC  # ``Image.thumbnail``'s
# Pillow's bicubic makes an output pixel at most 1.14 times its sources' brightest value
# (its normalised positive coefficients' sum, the most over every scale and position, as
# its Resample.c computes them), 1.29 over its two passes, plus a level of rounding each:
# so a thumbnail pixel reaches BAR_MIN_LEVEL (150) only from sources reaching 115 in every
# channel. 1.5 leaves a margin (100).
_BICUBIC_GAIN = 1.5
_BAR_SOURCE_LEVEL = math.floor(BAR_MIN_LEVEL / _BICUBIC_GAIN)
# MPO (a JPEG with extra pictures, as many cameras write) decodes its first picture as JPEG.
_DRAFTABLE_FORMATS = ("JPEG", "MPO")
# EXIF orientation to the transposition that shows the picture upright (as ImageOps does).
_TRANSPOSITIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class ImageDecodeError(Exception):
    """An image that cannot be graded for a reason the submitter can act on."""

    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def decode_image(
    data: bytes,
    *,
    max_pixels: int,
    draft_size: int | None = None,
    budget: PixelBudget | None = None,
) -> Image.Image:
    """Decode bytes into an upright 8-bit RGB image, or raise :class:`ImageDecodeError`.

    Multi-frame files (animated GIF, APNG and WebP, multi-page TIFF, MPO, multi-frame
    DICOM) are graded on their first frame alone: it is the frame every viewer shows, the
    one whose size the pixel limit checks, and the later frames are never decoded.

    A DICOM file is recognised by its ``DICM`` magic, whatever it is called, and decoded
    by :mod:`common.imaging.dicom` under the same limits.

    ``draft_size`` is the shorter side the image is wanted at, at least: a JPEG decoder
    downscales by a power of two while decoding, which is far cheaper than decoding 12
    megapixels and resizing afterwards, and any other format is reduced by a whole factor
    (a box filter) right after decoding. Either way the full-resolution frame is gone
    before the image is turned upright, converted to RGB, checked or preprocessed, so it
    is never copied. Without ``draft_size`` the image is returned at full size.

    ``budget``, when given, holds the frame's pixels (its size after any JPEG draft) from
    before it is decoded until it has been reduced, so the threads sharing it never hold
    more full-resolution pixels at once than it allows.
    """
    if not data:
        raise ImageDecodeError("empty_file", "the file is empty")
    if is_dicom(data):
        image = _decode_dicom(data, max_pixels=max_pixels, draft_size=draft_size, budget=budget)
        _check_size(image)
        return image
    try:
        with warnings.catch_warnings():
            # Pillow warns from its own limit (``Image.MAX_IMAGE_PIXELS``, which the worker
            # sets to ``max_pixels``); ``max_pixels`` is the limit that applies, checked below
            # before any pixel is decoded. Beyond twice Pillow's limit it refuses outright,
            # which is still "too many pixels".
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(data))
            # Explicit, because the pixel limit below is checked against this frame only.
            opened.seek(0)
            width, height = opened.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    "too_many_pixels",
                    f"{width}x{height} exceeds the limit of {max_pixels} pixels",
                )
            if draft_size and opened.format in _DRAFTABLE_FORMATS:
                opened.draft("RGB", (draft_size, draft_size))
            decoded = opened.width * opened.height
            if budget and decoded > budget.capacity:
                raise ImageDecodeError(
                    "too_many_pixels",
                    f"{width}x{height} exceeds the decoding budget of {budget.capacity} pixels",
                )
            with budget.hold(decoded) if budget else nullcontext():
                image, transpose = _load_reduced(opened, draft_size)
            if transpose is not None:
                image = image.transpose(transpose)
            image = to_rgb(image)
            if image is opened and opened.format != "JPEG":
                # A new single-frame image, detached from the file's frame sequence. A JPEG
                # has no other frame (an MPO with more is "MPO"), and copying the camera
                # formats' decoded pixels would cost a millisecond per photograph.
                image = opened.copy()
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        # Pillow's frames in the traceback hold its decoder, and the decoder the frame's
        # pixels: an error kept as a result must not keep a full-size image alive.
        traceback.clear_frames(exc.__traceback__)
        raise _decode_error(exc) from exc
    _check_size(image)
    return image


def _check_size(image: Image.Image) -> None:
    if min(image.size) < MIN_SIDE:
        raise ImageDecodeError(
            "too_small", f"{image.size[0]}x{image.size[1]} is below {MIN_SIDE} pixels a side"
        )


def _decode_dicom(
    data: bytes, *, max_pixels: int, draft_size: int | None, budget: PixelBudget | None
) -> Image.Image:
    """:func:`decode_image` for a DICOM file: its first frame, checked against the same
    limits from the header before any pixel is decoded, reduced as soon as it is."""
    # pydicom (and NumPy's decoders behind it) load on the first DICOM file only.
    from common.imaging.dicom import DicomPixelError, first_frame, frame_header

    try:
        frame = frame_header(data)
        pixels = frame.width * frame.height
        if pixels > max_pixels:
            raise ImageDecodeError(
                "too_many_pixels",
                f"{frame.width}x{frame.height} exceeds the limit of {max_pixels} pixels",
            )
        if budget and pixels > budget.capacity:
            raise ImageDecodeError(
                "too_many_pixels",
                f"{frame.width}x{frame.height} exceeds the decoding budget of "
                f"{budget.capacity} pixels",
            )
        with budget.hold(pixels) if budget else nullcontext():
            image = _reduced(first_frame(data, frame), draft_size)
    except DicomPixelError as exc:
        # As for Pillow's errors: the decoder's frames must not keep a frame's pixels alive.
        traceback.clear_frames(exc.__traceback__)
        raise ImageDecodeError(exc.code, exc.message) from None
    return to_rgb(image)


def _decode_error(exc: Exception) -> ImageDecodeError:
    """What a failure inside Pillow means for the submitter."""
    if isinstance(exc, Image.DecompressionBombError):
        return ImageDecodeError("too_many_pixels", str(exc))
    if isinstance(exc, UnidentifiedImageError):
        return ImageDecodeError("not_an_image", "not a recognised image format")
    return ImageDecodeError("corrupt_image", f"the image data is damaged: {exc}")


def _load_reduced(
    opened: Image.Image, draft_size: int | None
) -> tuple[Image.Image, Image.Transpose | None]:
    """Decode the frame and reduce it towards ``draft_size``; with its EXIF transposition.

    The full-resolution frame is closed here, on success or failure, unless it is the
    image returned: an error's traceback would otherwise keep its pixels alive after
    the budget had been given back.
    """
    try:
        opened.load()
        # Read after loading: a PNG may carry its EXIF after the pixel data.
        transpose = _TRANSPOSITIONS.get(opened.getexif().get(ExifTags.Base.Orientation, 1))
    except BaseException:
        opened.close()
        raise
    return _reduced(opened, draft_size), transpose


def _reduced(image: Image.Image, draft_size: int | None) -> Image.Image:
    """The loaded image reduced by a whole factor towards ``draft_size``; the full-size one
    is closed, on success or failure, unless it is the image returned."""
    try:
        factor = min(image.size) // draft_size if draft_size else 1
        if factor <= 1:
            return image
        reduced = _reducible(image).reduce(factor)
    except BaseException:
        image.close()
        raise
    image.close()
    return reduced


def _reducible(image: Image.Image) -> Image.Image:
    """The image in a mode whose pixels can be averaged: palette and bilevel ones cannot."""
    if image.mode in ("P", "PA"):
        transparent = image.mode == "PA" or "transparency" in image.info
        return image.convert("RGBA" if transparent else "RGB")
    if image.mode == "1":
        return image.convert("L")
    if image.mode.startswith("I;16"):
        return image.convert("I")
    return image


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
    """Bounding box of the retina; the whole image when none stands out.

    The same detector as the quality check's (:mod:`common.imaging.field_of_view`): the largest
    bright region inside any white or grey bars along the edges, so text burnt into a
    corner, a glint outside the disc or an export's white bar does not widen the crop, and
    a rectangular crop is the frame minus its black borders.

    The quality check's own field of view is not reused: it is found on a smaller copy
    (160 px), on the brightest channel above a threshold that follows the exposure, and
    its box differs from this one by a few pixels on most photographs (tens on dim ones),
    which changes the model's input and, on the bundled model, 2 grades in 130. This box
    is what PREPROCESSING_VERSION "2" crops to; finding it again costs about 2-3 ms.
    """
    # luminance reduced as it always was, so a photograph without bars is cropped exactly
    # as the bundled model's training images were; colour only to find the bars
    small = image.convert("L")
    small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    frame = _thumbnail_bars(image, small.size)
    mask = field_of_view_region(np.asarray(small), FIELD_OF_VIEW_THRESHOLD, frame)
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


def _thumbnail_bars(image: Image.Image, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """:func:`edge_bars` of the image's colour thumbnail at ``size`` (as ``thumbnail`` makes
    it), resampled only when an edge line of it could belong to a bar.

    A photograph's black surround rules every edge out from a few source rows and columns,
    and the colour thumbnail is then never made: a third of the crop's cost at camera sizes.
    """
    strips = _edge_strips(image.size, size)
    if image.mode == "RGB" and not any(_may_be_bar(image, strip) for strip in strips):
        return (0, 0, *size)
    colour = image if image.size == size else image.resize(size, THUMBNAIL_RESAMPLING, None, 2.0)
    return edge_bars(np.asarray(colour))


def _edge_strips(
    source: tuple[int, int], size: tuple[int, int]
) -> tuple[tuple[int, int, int, int], ...]:
    """The source pixels each edge line of a ``size`` thumbnail is resampled from: top,
    bottom, left, right.

    An edge pixel's centre lies half a scale (source pixels per thumbnail pixel) in, and
    bicubic reaches 2 scales either side of it; a ``reducing_gap`` of 2 first averages
    blocks of at most half a scale, which reach another 0.75 of one: 4 scales and 2 pixels
    of rounding hold every source pixel an edge line is made from.
    """
    width, height = source
    deep = min(height, math.ceil(4 * height / size[1]) + 2)
    wide = min(width, math.ceil(4 * width / size[0]) + 2)
    return (
        (0, 0, width, deep),
        (0, height - deep, width, height),
        (0, 0, wide, height),
        (width - wide, 0, width, height),
    )


def _may_be_bar(image: Image.Image, strip: tuple[int, int, int, int]) -> bool:
    """Whether a pixel resampled from ``strip`` of an RGB image could be as bright as a
    bar's in every channel: only if each channel reaches :data:`_BAR_SOURCE_LEVEL` there."""
    extrema = image.crop(strip).getextrema()
    return all(isinstance(band, tuple) and band[1] >= _BAR_SOURCE_LEVEL for band in extrema)
