"""What a DICOM file's header says about the photograph: patient, eye, study and camera.

The API reads this at upload, where pydicom cannot be used: importing it loads NumPy and
Pillow whenever they are installed, and the API process never loads either. So this is a
small reader of DICOM Part 10 (PS3.10) files for the few attributes the API keeps, in the
standard library alone. It reads no further than group 0020, where the last of them lies,
so it never reaches the pixel data, and it reads at most :data:`MAX_HEADER_BYTES`. A header
it cannot read gives no metadata, never an error: decoding (the worker's, with pydicom) is
what decides whether a file can be graded.

Nothing here logs: the values are patient data.
"""

from __future__ import annotations

import io
import struct
import unicodedata
import zlib
from dataclasses import dataclass
from datetime import date
from typing import BinaryIO, Protocol

PREAMBLE = 128
MAGIC = b"DICM"
# The most header bytes read (or inflated) before giving up: the attributes kept lie near
# the start, and a file claiming otherwise is not worth reading further.
MAX_HEADER_BYTES = 1 << 20
MAX_DEVICE_LENGTH = 128
_MAX_DEPTH = 8  # nested sequences followed; deeper is not a photograph's header
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
# Explicit VRs whose length takes four bytes after two reserved ones (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_IMPLICIT_LITTLE = "1.2.840.10008.1.2"
_EXPLICIT_BIG = "1.2.840.10008.1.2.2"
_DEFLATED = "1.2.840.10008.1.2.1.99"
_TRANSFER_SYNTAX = 0x00020010
_CHARACTER_SET = 0x00080005
_STUDY_DATE = 0x00080020
_MANUFACTURER = 0x00080070
_MODEL_NAME = 0x00081090
_PATIENT_ID = 0x00100020
_STUDY_INSTANCE_UID = 0x0020000D
_LATERALITY = 0x00200060
_IMAGE_LATERALITY = 0x00200062
_KEPT = frozenset(
    {
        _TRANSFER_SYNTAX,
        _CHARACTER_SET,
        _STUDY_DATE,
        _MANUFACTURER,
        _MODEL_NAME,
        _PATIENT_ID,
        _STUDY_INSTANCE_UID,
        _LATERALITY,
        _IMAGE_LATERALITY,
    }
)
_LAST_KEPT = _IMAGE_LATERALITY
# Specific Character Set terms whose text Python decodes as one codec; the default
# repertoire is ASCII, and a value in any other set is left out rather than misread.
_CODECS = {"": "ascii", "ISO_IR 6": "ascii", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}


@dataclass(frozen=True)
class DicomHeader:
    """The attributes kept from a header, each None when absent or not valid."""

    patient_id: str | None = None
    laterality: str | None = None  # "L" or "R", as the metadata CSV's
    study_date: date | None = None
    study_instance_uid: str | None = None
    device: str | None = None  # Manufacturer and Manufacturer's Model Name


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Unreadable(Exception):
    """The header ends early or breaks the encoding's rules."""


def is_dicom(prefix: bytes) -> bool:
    """Whether bytes begin as a DICOM Part 10 file: the magic after the preamble, not a name."""
    return prefix[PREAMBLE : PREAMBLE + len(MAGIC)] == MAGIC


def read_header(stream: BinaryIO) -> DicomHeader | None:
    """The header of the DICOM file ``stream`` is positioned at the start of; None when it
    is not one or cannot be read. Reads at most :data:`MAX_HEADER_BYTES`, no pixel data."""
    prefix = stream.read(PREAMBLE + len(MAGIC))
    if not is_dicom(prefix):
        return None
    try:
        limited = _Limited(stream, MAX_HEADER_BYTES)
        meta = _Reader(io.BytesIO(_file_meta(limited)), explicit=True, little=True).elements(
            stop_after=0x0002FFFF
        )
        syntax = _text(meta.get(_TRANSFER_SYNTAX, b""), "ascii") or ""
        body: _Readable = limited
        if syntax == _DEFLATED:
            body = io.BytesIO(_inflate(limited))
        reader = _Reader(body, explicit=syntax != _IMPLICIT_LITTLE, little=syntax != _EXPLICIT_BIG)
        return _header(reader.elements(stop_after=_LAST_KEPT))
    except (_Unreadable, struct.error, zlib.error, OSError):
        return None


def _file_meta(stream: _Readable) -> bytes:
    """The file meta information group, measured by its group length (PS3.10 7.1), so
    that reading it stops exactly where the data set begins."""
    start = stream.read(12)
    if len(start) != 12 or start[:6] != b"\x02\x00\x00\x00UL":
        raise _Unreadable("the file meta information has no group length")
    (length,) = struct.unpack("<I", start[8:])
    meta = stream.read(length)
    if len(meta) != length:
        raise _Unreadable("the file meta information ends early")
    return meta


def _header(values: dict[int, bytes]) -> DicomHeader:
    codec = _CODECS.get(_text(values.get(_CHARACTER_SET, b""), "ascii") or "")
    if codec is None:
        return DicomHeader()
    side = _text(values.get(_IMAGE_LATERALITY) or values.get(_LATERALITY, b""), codec)
    return DicomHeader(
        patient_id=_patient_id(_text(values.get(_PATIENT_ID, b""), codec)),
        laterality=side if side in ("L", "R") else None,
        study_date=_date(_text(values.get(_STUDY_DATE, b""), "ascii")),
        study_instance_uid=_uid(_text(values.get(_STUDY_INSTANCE_UID, b""), "ascii")),
        device=_device(
            _text(values.get(_MANUFACTURER, b""), codec),
            _text(values.get(_MODEL_NAME, b""), codec),
        ),
    )


def _text(raw: bytes, codec: str) -> str | None:
    """A value's text without DICOM's padding (spaces, NUL for UIDs); None if empty or
    not text in ``codec``."""
    try:
        text = raw.decode(codec).strip(" \x00")
    except UnicodeDecodeError:
        return None
    return text or None


def _plain(text: str | None, limit: int) -> str | None:
    """Text fit to keep: within ``limit`` characters, without control characters."""
    if text is None or len(text) > limit:
        return None
    if any(unicodedata.category(ch) == "Cc" for ch in text):
        return None
    return text


def _patient_id(text: str | None) -> str | None:
    # The metadata CSV's rule (api.uploads.MAX_PATIENT_ID_LENGTH); LO allows only 64.
    return _plain(text, 128)


def _date(text: str | None) -> date | None:
    if text is None or len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def _uid(text: str | None) -> str | None:
    if text is None or len(text) > 64 or not all(ch.isdigit() or ch == "." for ch in text):
        return None
    return text


def _device(manufacturer: str | None, model: str | None) -> str | None:
    parts = [part for part in (manufacturer, model) if part]
    return _plain(" ".join(parts), MAX_DEVICE_LENGTH) if parts else None


def _inflate(stream: _Readable) -> bytes:
    """The deflated data set's first :data:`MAX_HEADER_BYTES`, however much it inflates to."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    return inflater.decompress(stream.read(), MAX_HEADER_BYTES)


class _Limited:
    """A read-only view of a stream that ends after ``limit`` bytes."""

    def __init__(self, stream: _Readable, limit: int) -> None:
        self._stream = stream
        self._left = limit

    def read(self, size: int = -1) -> bytes:
        size = self._left if size < 0 else min(size, self._left)
        data = self._stream.read(size)
        self._left -= len(data)
        return data


class _Reader:
    """Data elements in one transfer syntax's encoding, values kept only for :data:`_KEPT`."""

    def __init__(self, stream: _Readable, *, explicit: bool, little: bool) -> None:
        self._stream = stream
        self._explicit = explicit
        self._order = "<" if little else ">"

    def elements(self, stop_after: int) -> dict[int, bytes]:
        """Top-level elements, in order, until one past ``stop_after`` or the end."""
        values: dict[int, bytes] = {}
        while True:
            start = self._stream.read(4)
            if not start:
                return values
            tag = self._tag(start)
            if tag > stop_after:
                return values
            length = self._length(tag)
            if length == _UNDEFINED:
                self._skip_items(depth=1)
            elif tag in _KEPT:
                values[tag] = self._exactly(length)
            else:
                self._exactly(length)

    def _skip_items(self, depth: int) -> None:
        """Skip a sequence of undefined length, to its delimiter."""
        if depth > _MAX_DEPTH:
            raise _Unreadable("sequences nested too deeply")
        while True:
            tag, length = self._item()
            if tag == _SEQUENCE_END:
                return
            if tag != _ITEM:
                raise _Unreadable("a sequence holds something other than items")
            if length == _UNDEFINED:
                self._skip_item_elements(depth)
            else:
                self._exactly(length)

    def _skip_item_elements(self, depth: int) -> None:
        """Skip an item of undefined length, to its delimiter."""
        while True:
            tag = self._tag(self._exactly(4))
            if tag == _ITEM_END:
                self._exactly(4)
                return
            length = self._length(tag)
            if length == _UNDEFINED:
                self._skip_items(depth + 1)
            else:
                self._exactly(length)

    def _item(self) -> tuple[int, int]:
        tag = self._tag(self._exactly(4))
        (length,) = struct.unpack(self._order + "I", self._exactly(4))
        return tag, length

    def _tag(self, raw: bytes) -> int:
        if len(raw) != 4:
            raise _Unreadable("the header ends inside a tag")
        group, element = struct.unpack(self._order + "HH", raw)
        return int(group) << 16 | int(element)

    def _length(self, tag: int) -> int:
        if tag >> 16 == 0xFFFE or not self._explicit:
            (length,) = struct.unpack(self._order + "I", self._exactly(4))
        else:
            vr = self._exactly(2)
            if vr in _LONG_VRS:
                (length,) = struct.unpack(self._order + "2xI", self._exactly(6))
            else:
                (length,) = struct.unpack(self._order + "H", self._exactly(2))
        return int(length)

    def _exactly(self, size: int) -> bytes:
        data = self._stream.read(size)
        if len(data) != size:
            raise _Unreadable("the header ends inside an element")
        return data
