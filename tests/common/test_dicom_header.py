"""The API's DICOM header reader against files pydicom writes: every encoding, the
attributes kept, what is left out, and never a byte of pixel data read."""

from __future__ import annotations

import io
from datetime import date

import pytest
from pydicom import dcmread
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    RLELossless,
)

from common.dicom_header import MAX_HEADER_BYTES, DicomHeader, is_dicom, read_header
from lab.synthetic import generate_fundus
from tests.dicom_files import STUDY_UID, dicom_bytes

FUNDUS = generate_fundus(0, seed=5, size=64)
EXPECTED = DicomHeader(
    patient_id="DCM-PATIENT-0042",
    laterality="L",
    study_date=date(2026, 3, 14),
    study_instance_uid=STUDY_UID,
    device="Topcon TRC-NW400",
)


class _CountingReader(io.BytesIO):
    """Bytes read so far, to show the reader stops before the pixel data."""

    furthest = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.furthest = max(self.furthest, self.tell())
        return data


@pytest.mark.parametrize(
    "syntax",
    [
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
        RLELossless,
        JPEGBaseline8Bit,
        JPEG2000Lossless,
    ],
    ids=lambda uid: uid.name,
)
def test_every_encoding_gives_the_same_header(syntax: str) -> None:
    data = dicom_bytes(FUNDUS, syntax)
    assert dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == syntax
    stream = _CountingReader(data)
    assert read_header(stream) == EXPECTED
    if syntax != DeflatedExplicitVRLittleEndian:  # inflated whole, up to the limit
        assert stream.furthest < data.index(
            b"\xe0\x7f\x10\x00" if syntax != ExplicitVRBigEndian else b"\x7f\xe0\x00\x10"
        )


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"laterality": None, "eye_laterality": "R"}, {"laterality": "R"}),
        ({"laterality": "R", "eye_laterality": "L"}, {"laterality": "R"}),
        ({"laterality": "B"}, {"laterality": None}),  # both eyes: not one photograph's eye
        ({"patient_id": None, "study_date": None}, {"patient_id": None, "study_date": None}),
        ({"manufacturer": None}, {"device": "TRC-NW400"}),
        ({"manufacturer": None, "model": None}, {"device": None}),
        (
            {"patient_id": "Zoë-Ørsted", "character_set": "ISO_IR 192"},
            {"patient_id": "Zoë-Ørsted"},
        ),
        (
            {"patient_id": "Zoë-Ørsted", "character_set": "ISO_IR 100"},
            {"patient_id": "Zoë-Ørsted"},
        ),
    ],
    ids=[
        "series-laterality",
        "image-laterality-first",
        "both-eyes",
        "absent",
        "model-only",
        "no-device",
        "utf-8",
        "latin-1",
    ],
)
def test_attributes_kept_and_left_out(
    options: dict[str, object], expected: dict[str, object]
) -> None:
    header = read_header(io.BytesIO(dicom_bytes(FUNDUS, **options)))  # type: ignore[arg-type]
    assert header == DicomHeader(**{**EXPECTED.__dict__, **expected})


def test_text_in_an_unknown_character_set_is_left_out_not_misread() -> None:
    data = dicom_bytes(FUNDUS, patient_id="ABC", character_set="ISO_IR 144")
    assert read_header(io.BytesIO(data)) == DicomHeader()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xd8\xff\xe0 a JPEG" + b"\x00" * 200,
        b"\x00" * 128 + b"DICM",
        b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00\xff\xff\xff\x7f",
        dicom_bytes(FUNDUS)[:400],
    ],
    ids=["empty", "jpeg", "magic-only", "meta-claims-2GB", "truncated"],
)
def test_not_dicom_or_unreadable_gives_none_or_nothing(data: bytes) -> None:
    header = read_header(io.BytesIO(data))
    assert header is None or header == DicomHeader()


def test_a_header_longer_than_the_limit_is_not_read_to_its_end() -> None:
    stream = _CountingReader(dicom_bytes(FUNDUS))
    # A private element of 4 MiB before the patient's attributes.
    ds = dcmread(io.BytesIO(stream.getvalue()))
    ds.add_new(0x00090010, "LO", "ACME")
    ds.add_new(0x00091000, "OB", b"\x00" * (4 << 20))
    buffer = _CountingReader()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    assert read_header(buffer) is None
    assert buffer.furthest <= MAX_HEADER_BYTES + 200


def test_magic_not_name() -> None:
    assert is_dicom(dicom_bytes(FUNDUS)[:132])
    assert not is_dicom(b"DICM" + b"\x00" * 128)
