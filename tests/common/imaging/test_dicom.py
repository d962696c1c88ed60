"""DICOM photographs decode like any other: every supported transfer syntax and colour
interpretation to the same RGB picture, under the same limits, by content not by name."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from common.imaging.decode import ImageDecodeError, decode_image
from common.imaging.pixel_budget import PixelBudget
from lab.synthetic import generate_fundus
from tests.dicom_files import dicom_bytes, imageless_bytes, unsupported_syntax_bytes

LIMIT = 50_000_000
FUNDUS = generate_fundus(2, seed=11, size=256)
LOSSLESS = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEG2000Lossless,
)
# Mean absolute difference per channel a lossy codec may leave at these settings.
LOSSY = {JPEGBaseline8Bit: 4.0, JPEG2000: 2.0}


def _difference(image: Image.Image, reference: Image.Image) -> float:
    return float(np.abs(np.asarray(image, int) - np.asarray(reference, int)).mean())


def _dataset(data: bytes) -> tuple[str, str]:
    ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
    return str(ds.file_meta.TransferSyntaxUID), str(ds.PhotometricInterpretation)


@pytest.mark.parametrize("syntax", LOSSLESS, ids=lambda uid: uid.name)
def test_lossless_syntaxes_decode_to_the_exact_photograph(syntax: str) -> None:
    data = dicom_bytes(FUNDUS, syntax)
    assert _dataset(data)[0] == syntax
    image = decode_image(data, max_pixels=LIMIT)
    assert image.mode == "RGB"
    assert image.size == FUNDUS.size
    assert _difference(image, FUNDUS) == 0.0


@pytest.mark.parametrize(
    ("syntax", "photometric"),
    [(JPEGBaseline8Bit, "YBR_FULL_422"), (JPEGBaseline8Bit, "YBR_FULL"), (JPEG2000, "YBR_ICT")],
    ids=["jpeg-ybr-422", "jpeg-ybr-full", "j2k-ict"],
)
def test_lossy_syntaxes_decode_to_rgb_close_to_the_photograph(
    syntax: str, photometric: str
) -> None:
    data = dicom_bytes(FUNDUS, syntax, photometric=photometric)
    assert _dataset(data) == (syntax, photometric)
    image = decode_image(data, max_pixels=LIMIT)
    assert image.mode == "RGB"
    # Colour converted, not left as YCbCr (which would be far off in every channel).
    assert _difference(image, FUNDUS) < LOSSY[syntax]


def test_monochrome_becomes_grey_rgb() -> None:
    data = dicom_bytes(FUNDUS, ExplicitVRLittleEndian, photometric="MONOCHROME2")
    image = decode_image(data, max_pixels=LIMIT)
    assert image.mode == "RGB"
    assert _difference(image, FUNDUS.convert("L").convert("RGB")) == 0.0


def test_multi_frame_is_graded_on_its_first_frame() -> None:
    data = dicom_bytes(FUNDUS, RLELossless, frames=3)
    assert int(dcmread(io.BytesIO(data)).NumberOfFrames) == 3
    assert _difference(decode_image(data, max_pixels=LIMIT), FUNDUS) == 0.0


def test_found_by_its_magic_not_its_name() -> None:
    # decode_image never sees a name; a DICOM file is also not mistaken for anything else.
    data = dicom_bytes(FUNDUS, JPEGBaseline8Bit)
    assert data[128:132] == b"DICM"
    assert decode_image(data, max_pixels=LIMIT).size == FUNDUS.size


def test_draft_size_reduces_as_for_other_formats() -> None:
    big = generate_fundus(1, seed=3, size=1024)
    image = decode_image(dicom_bytes(big, RLELossless), max_pixels=LIMIT, draft_size=256)
    assert image.size == (256, 256)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (unsupported_syntax_bytes(FUNDUS), "unsupported_transfer_syntax"),
        # A header declaring 3.6 gigapixels over 192 KiB of pixels: refused before decoding.
        (dicom_bytes(FUNDUS, RLELossless, rows=60_000, columns=60_000), "too_many_pixels"),
        (dicom_bytes(FUNDUS, JPEGBaseline8Bit)[:2000], "corrupt_image"),
        (dicom_bytes(Image.new("RGB", (16, 16)), ExplicitVRLittleEndian), "too_small"),
        (b"\x00" * 128 + b"DICM" + b"\x00" * 40, "corrupt_image"),
        (imageless_bytes(), "not_an_image"),
    ],
    ids=["mpeg4", "bomb", "truncated", "16x16", "magic-only", "report"],
)
def test_undecodable_dicom_gets_a_specific_code(data: bytes, code: str) -> None:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, max_pixels=2_000_000)
    assert info.value.code == code


def test_a_bomb_over_the_budget_is_refused_and_the_budget_left_whole() -> None:
    budget = PixelBudget(100_000)
    with pytest.raises(ImageDecodeError) as info:
        decode_image(dicom_bytes(FUNDUS, RLELossless, rows=1000), max_pixels=LIMIT, budget=budget)
    assert info.value.code == "too_many_pixels"
    image = decode_image(dicom_bytes(FUNDUS, RLELossless), max_pixels=LIMIT, budget=budget)
    assert image.size == FUNDUS.size
    assert budget.in_use == 0
    assert budget.peak == 256 * 256


@pytest.mark.parametrize("fmt", ["JPEG", "JPEG2000"])
def test_a_codestream_larger_than_its_header_is_refused_before_decoding(fmt: str) -> None:
    # The decoders size their output from the codestream: a 64 x 64 header over a
    # 4,000 x 4,000 frame would be decoded whole before the mismatch showed.
    syntax = JPEGBaseline8Bit if fmt == "JPEG" else JPEG2000Lossless
    ds = dcmread(io.BytesIO(dicom_bytes(Image.new("RGB", (64, 64)), syntax)))
    codestream = io.BytesIO()
    options = {"no_jp2": True} if fmt == "JPEG2000" else {}
    Image.new("RGB", (4000, 4000)).save(codestream, format=fmt, **options)
    ds.PixelData = encapsulate([codestream.getvalue()])
    data = io.BytesIO()
    ds.save_as(data, enforce_file_format=True)
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data.getvalue(), max_pixels=LIMIT)
    assert info.value.code == "corrupt_image"
    assert "declares 4000x4000, the header 64x64" in info.value.message
