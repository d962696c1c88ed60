"""Decoding edge cases, table-driven."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from common.imaging.decode import ImageDecodeError, decode_image, field_of_view_box
from common.imaging.preprocessing import square_fundus

LIMIT = 50_000_000


def _encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _disc(size: int = 200, mode: str = "RGB") -> Image.Image:
    """A bright disc on black, off-centre, in the requested mode."""
    yy, xx = np.mgrid[:size, : size + 60]
    inside = (yy - size / 2) ** 2 + (xx - size / 2 - 40) ** 2 < (size * 0.4) ** 2
    rgb = np.zeros((size, size + 60, 3), dtype=np.uint8)
    rgb[inside] = (200, 90, 40)
    return Image.fromarray(rgb).convert(mode)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares a huge size but carries almost no data (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty_file"),
        (b"\x00\x01 random bytes that are not an image" * 10, "not_an_image"),
        (b"%PDF-1.7\n1 0 obj << >> endobj\n", "not_an_image"),
        (_encode(_disc(), "JPEG")[:400], "corrupt_image"),
        (_png_header_only(100_000, 100_000), "too_many_pixels"),
        (_encode(Image.new("RGB", (1, 1)), "PNG"), "too_small"),
    ],
    ids=["empty", "random", "pdf", "truncated-jpeg", "bomb", "1x1"],
)
def test_undecodable_input_gets_a_specific_code(data: bytes, code: str) -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, max_pixels=LIMIT)
    assert info.value.code == code
    assert info.value.message


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("L", "PNG"),
        ("I;16", "PNG"),
        ("P", "PNG"),
        ("RGBA", "PNG"),
        ("LA", "PNG"),
        ("CMYK", "JPEG"),
        ("RGB", "TIFF"),
        ("RGB", "BMP"),
        ("RGB", "WEBP"),
    ],
)
def test_every_common_mode_becomes_rgb(mode: str, fmt: str) -> None:
    source = _disc(mode="L") if mode == "I;16" else _disc(mode=mode)
    if mode == "I;16":
        source = Image.fromarray(np.asarray(source, dtype=np.uint16) * 257)
    image = decode_image(_encode(source, fmt), max_pixels=LIMIT)
    assert image.mode == "RGB"
    pixels = np.asarray(image)
    assert pixels.max() > 100, "the disc must survive conversion"
    assert pixels[0, 0].max() < 20, "the black frame stays black"


def test_exif_orientation_is_applied() -> None:
    wide = _disc()  # 260 x 200
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    data = _encode(wide, "JPEG", exif=exif.tobytes())
    assert decode_image(data, max_pixels=LIMIT).size == (200, 260)


def test_jpeg_draft_downscales_while_decoding() -> None:
    big = _disc(size=1600)
    image = decode_image(_encode(big, "JPEG"), max_pixels=LIMIT, draft_size=256)
    assert 256 <= min(image.size) < 800


def test_field_of_view_crop_centres_the_disc() -> None:
    box = field_of_view_box(_disc())
    left, top, right, bottom = box
    assert 55 <= left <= 65 and 215 <= right <= 226
    assert 15 <= top <= 25 and 175 <= bottom <= 186
    square = square_fundus(_disc(), 64)
    assert square.shape == (64, 64, 3)
    centre = square[32, 32]
    assert centre[0] > 150


def test_blank_image_keeps_the_whole_frame() -> None:
    black = Image.new("RGB", (120, 80))
    assert field_of_view_box(black) == (0, 0, 120, 80)


def test_text_burnt_into_a_corner_does_not_widen_the_crop() -> None:
    plain = _disc()
    annotated = plain.copy()
    ImageDraw.Draw(annotated).rectangle((2, 2, 60, 12), fill=(255, 255, 255))  # "OD 2026-11-26"
    assert field_of_view_box(annotated) == field_of_view_box(plain)
