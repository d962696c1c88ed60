"""DICOM photographs (Ophthalmic Photography and any other single- or multi-frame image) as
pixels, through pydicom and whichever decoding plugins are installed.

pydicom decodes uncompressed and RLE data itself (with NumPy), JPEG baseline, extended and
JPEG 2000 through Pillow, and JPEG lossless and JPEG-LS through GDCM (python-gdcm, the
worker extra). A transfer syntax none of them decodes is ``unsupported_transfer_syntax``
for that image alone. Like every multi-frame format here, only the first frame is decoded.
:mod:`common.imaging.decode` calls these two steps around its pixel budget: the frame's
size from the header first, then the frame.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from pydicom import config, dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_color_lut
from pydicom.pixels.utils import pixel_array
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

# pydicom validates a value when it is first read and warns, to the ``pydicom`` logger, with
# the value in the message: a patient's ID in a worker's log. The pixels need none of that.
config.settings.reading_validation_mode = config.IGNORE

# What pydicom leaves in these interpretations after decoding (it converts YBR_FULL and
# YBR_FULL_422 to RGB; a JPEG 2000 decoder undoes YBR_ICT and YBR_RCT), and the PIL mode.
_MODES = {
    "MONOCHROME1": "L",
    "MONOCHROME2": "L",
    "PALETTE COLOR": "RGB",
    "RGB": "RGB",
    "YBR_FULL": "RGB",
    "YBR_FULL_422": "RGB",
    "YBR_ICT": "RGB",
    "YBR_RCT": "RGB",
}

# JPEG's start-of-frame markers (SOF0-3, 5-7, 9-11, 13-15) and JPEG-LS's (SOF55).
_START_OF_FRAME = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC)}) | {
    *range(0xCD, 0xD0),
    0xF7,
}


class DicomPixelError(ValueError):
    """A DICOM file whose first frame cannot be decoded, with the image's failure code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class DicomFrame:
    """The first frame's layout, as the header declares it, before any pixel is decoded."""

    width: int
    height: int
    frames: int
    header: Dataset


def frame_header(data: bytes) -> DicomFrame:
    """Read the header and check the first frame can be decoded, decoding no pixel."""
    try:
        header: Dataset = dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception as exc:  # untrusted bytes: any parser failure means a damaged header
        raise DicomPixelError("corrupt_image", f"the DICOM header is damaged: {exc}") from exc
    syntax = header.file_meta.get("TransferSyntaxUID")
    if not syntax:
        raise DicomPixelError("corrupt_image", "the DICOM file names no transfer syntax")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:  # pydicom's answer for a syntax it has no decoder for at all
        decoder = None
    if decoder is None or not decoder.is_available:
        raise DicomPixelError(
            "unsupported_transfer_syntax",
            f"the DICOM transfer syntax {syntax.name} ({syntax}) cannot be decoded here",
        )
    rows, columns = header.get("Rows"), header.get("Columns")
    if not rows or not columns:
        raise DicomPixelError("not_an_image", "the DICOM file holds no image (no Rows/Columns)")
    interpretation = header.get("PhotometricInterpretation")
    if interpretation not in _MODES or header.get("SamplesPerPixel", 1) not in (1, 3):
        raise DicomPixelError(
            "unsupported_photometric_interpretation",
            f"DICOM pixels in {interpretation!s} cannot be shown as a colour photograph",
        )
    frames = int(header.get("NumberOfFrames") or 1)
    if syntax == DeflatedExplicitVRLittleEndian or (
        syntax.is_encapsulated and syntax != RLELossless
    ):
        # Read from a file, pydicom would take deflated bytes for the data set itself; and
        # a JPEG's size must be checked on its own codestream, which the parsed data set
        # holds (a copy of at most the upload limit).
        header = _with_pixel_data(data)
    if syntax.is_encapsulated and syntax != RLELossless:
        _check_codestream(header, frames, (int(columns), int(rows)))
    return DicomFrame(width=int(columns), height=int(rows), frames=frames, header=header)


def _with_pixel_data(data: bytes) -> Dataset:
    try:
        return dcmread(io.BytesIO(data))
    except Exception as exc:  # untrusted bytes: any parser failure means damaged data
        raise DicomPixelError("corrupt_image", f"the DICOM data is damaged: {exc}") from exc


def _check_codestream(header: Dataset, frames: int, declared: tuple[int, int]) -> None:
    """Refuse a first frame whose codestream is not the size the header declares.

    The decoders size their output from the codestream, and compare it with Rows and
    Columns only afterwards: a 64 x 64 header over a 12,000 x 12,000 JPEG would be decoded
    whole (2 GB) before being found out, past the pixel limit checked on the header.
    """
    try:
        codestream = get_frame(header.PixelData, 0, number_of_frames=frames)
    except Exception as exc:  # untrusted bytes: any parser failure means damaged data
        raise DicomPixelError("corrupt_image", f"the DICOM pixel data is damaged: {exc}") from exc
    size = _codestream_size(codestream)
    if size != declared:
        found = f"{size[0]}x{size[1]}" if size else "no size"
        raise DicomPixelError(
            "corrupt_image",
            f"the first frame's codestream declares {found}, the header "
            f"{declared[0]}x{declared[1]}",
        )


def _codestream_size(codestream: bytes) -> tuple[int, int] | None:
    """(width, height) a JPEG, JPEG-LS or JPEG 2000 codestream declares, from its start."""
    siz = codestream.find(b"\xff\x4f\xff\x51", 0, 4096)  # JPEG 2000: SOC then SIZ
    if siz >= 0:
        xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">4I", codestream, siz + 8)
        return int(xsiz - xosiz), int(ysiz - yosiz)
    if codestream[:2] != b"\xff\xd8":
        return None
    position = 2
    while position + 9 <= len(codestream):
        if codestream[position] != 0xFF:
            return None
        marker = codestream[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length
            position += 2
        elif marker in _START_OF_FRAME:
            height, width = struct.unpack_from(">HH", codestream, position + 5)
            return int(width), int(height)
        else:
            (length,) = struct.unpack_from(">H", codestream, position + 2)
            position += 2 + int(length)
    return None


def first_frame(data: bytes, frame: DicomFrame) -> Image.Image:
    """Decode the first frame (8-bit ``L`` or ``RGB``), whatever its encoding and depth."""
    try:
        if "PixelData" in frame.header:
            array = pixel_array(frame.header, index=0)
        else:
            # From a file, pydicom reads the first frame's bytes alone.
            array = pixel_array(io.BytesIO(data), index=0)
    except Exception as exc:  # untrusted bytes: any decoder failure means damaged data
        raise DicomPixelError("corrupt_image", f"the DICOM pixel data is damaged: {exc}") from exc
    header = frame.header
    interpretation = str(header.PhotometricInterpretation)
    if interpretation == "PALETTE COLOR":
        array = _to_8_bit(apply_color_lut(array, header), _lut_bits(header))
    else:
        array = _to_8_bit(array, int(header.get("BitsStored") or array.dtype.itemsize * 8))
    if interpretation == "MONOCHROME1":
        array = 255 - array  # the lowest value is white
    mode = _MODES[interpretation]
    if (array.ndim == 3) != (mode == "RGB"):
        raise DicomPixelError(
            "corrupt_image", f"{interpretation} pixels decoded with shape {array.shape}"
        )
    return Image.fromarray(np.ascontiguousarray(array), mode=mode)


def _to_8_bit(array: np.ndarray[Any, Any], bits: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """Stored values scaled from their declared range (``bits``, signed or not) to 0-255."""
    if array.dtype == np.uint8 and bits >= 8:
        return array.astype(np.uint8, copy=False)
    low = -(1 << (bits - 1)) if np.issubdtype(array.dtype, np.signedinteger) else 0
    span = float((1 << bits) - 1)
    scaled = (array.astype(np.float32) - low) * (255.0 / span)
    result: np.ndarray[Any, np.dtype[np.uint8]] = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return result


def _lut_bits(header: Dataset) -> int:
    """A palette's entry depth: its descriptor's third value, 8 or 16."""
    descriptor = header.get("RedPaletteColorLookupTableDescriptor")
    return int(descriptor[2]) if descriptor else 16
