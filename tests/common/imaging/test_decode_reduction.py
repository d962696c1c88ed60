"""Decoding reduces every format to its working size at once and keeps no full-size copy."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from common.imaging.decode import ImageDecodeError, decode_image

LIMIT = 50_000_000


def _encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _disc(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A bright disc on black, left of centre, so a rotation or flip shows."""
    image = Image.new("RGB", (width, height))
    radius = int(height * 0.4)
    centre = (width // 3, height // 2)
    box = (centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius)
    ImageDraw.Draw(image).ellipse(box, fill=(200, 90, 40))
    if mode == "I;16":
        return Image.fromarray(np.asarray(image.convert("L"), dtype=np.uint16) * 257)
    return image.convert(mode)


def _live_bytes() -> int:
    """Pixel memory Pillow holds right now, in its allocator's blocks."""
    stats = Image.core.get_stats()
    return (stats["allocated_blocks"] - stats["freed_blocks"]) * Image.core.get_block_size()


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("RGB", "PNG"),
        ("L", "PNG"),
        ("I;16", "PNG"),
        ("P", "PNG"),
        ("RGBA", "PNG"),
        ("LA", "PNG"),
        ("1", "PNG"),
        ("RGB", "TIFF"),
        ("RGB", "BMP"),
        ("RGB", "WEBP"),
    ],
)
def test_a_large_image_of_any_mode_is_reduced_by_a_whole_factor(mode: str, fmt: str) -> None:
    data = _encode(_disc(2400, 1800, mode), fmt)
    image = decode_image(data, max_pixels=LIMIT, draft_size=512)
    assert image.mode == "RGB"
    assert image.size == (800, 600), "1800 // 512 = 3: a shorter side of 512..1023"
    pixels = np.asarray(image)
    assert pixels[300, 266].max() > 100, "the disc survives"
    assert pixels[5, 5].max() < 20 and pixels[300, 790].max() < 20, "the frame stays black"


def test_an_image_already_at_its_working_size_is_not_reduced() -> None:
    data = _encode(_disc(1500, 1000), "PNG")
    assert decode_image(data, max_pixels=LIMIT, draft_size=512).size == (1500, 1000)
    assert decode_image(data, max_pixels=LIMIT).size == (1500, 1000)


@pytest.mark.parametrize("fmt", ["TIFF", "PNG", "JPEG"])
def test_exif_orientation_survives_the_reduction(fmt: str) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    wide = _disc(4800, 3600)
    image = decode_image(_encode(wide, fmt, exif=exif.tobytes()), max_pixels=LIMIT, draft_size=256)
    assert image.width < image.height, "turned upright"
    assert 256 <= image.width < 512
    pixels = np.asarray(image.convert("L"))
    # The disc, left of centre in the file, is above centre once turned clockwise.
    rows = np.flatnonzero(pixels.max(axis=1) > 100)
    assert rows.mean() < image.height / 2


def test_no_full_resolution_copy_outlives_decoding() -> None:
    data = _encode(_disc(4000, 3000), "PNG")
    full_size = 4000 * 3000 * 4
    before = _live_bytes()
    image = decode_image(data, max_pixels=LIMIT, draft_size=512)
    assert image.size == (800, 600)
    # Pillow allocates in blocks (16 MiB): the reduced image takes one, the full size three.
    assert _live_bytes() - before < full_size / 2


def test_a_failed_decode_keeps_no_pixels_alive_through_its_error() -> None:
    data = _encode(_disc(4000, 3000), "PNG", compress_level=0)
    before = _live_bytes()
    with pytest.raises(ImageDecodeError) as failed:
        decode_image(data[: len(data) // 2], max_pixels=LIMIT, draft_size=512)
    assert failed.value.code == "corrupt_image"
    assert failed.value.__cause__ is not None, "the cause is kept for the logs"
    # The error is alive here, as a task's failures are until they are recorded.
    assert _live_bytes() - before == 0
