"""Real DICOM Ophthalmic Photography files, written by pydicom, for the decoding and upload
tests: the same photograph in every transfer syntax the worker decodes."""

from __future__ import annotations

import io
import tempfile
from datetime import date
from pathlib import Path

import gdcm
import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels.utils import compress
from pydicom.sequence import Sequence
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
    generate_uid,
)

OPHTHALMIC_PHOTOGRAPHY = "1.2.840.10008.5.1.4.1.1.77.1.5.1"  # 8 Bit Image Storage
STUDY_UID = "1.2.826.0.1.3680043.8.498.1234567890"


def dicom_bytes(
    image: Image.Image,
    syntax: str = ExplicitVRLittleEndian,
    *,
    photometric: str | None = None,
    frames: int = 1,
    patient_id: str | None = "DCM-PATIENT-0042",
    laterality: str | None = "L",
    eye_laterality: str | None = None,
    study_date: date | None = date(2026, 3, 14),
    manufacturer: str | None = "Topcon",
    model: str | None = "TRC-NW400",
    character_set: str | None = None,
    rows: int | None = None,
    columns: int | None = None,
) -> bytes:
    """``image`` as a DICOM file in ``syntax``, with the header attributes the API reads.

    ``rows`` and ``columns`` override the declared size (a bomb's header); ``frames`` adds
    black frames after the photograph.
    """
    rgb = np.asarray(image.convert("RGB") if photometric != "MONOCHROME2" else image.convert("L"))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = OPHTHALMIC_PHOTOGRAPHY
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if character_set:
        ds.SpecificCharacterSet = character_set
    ds.SOPClassUID = OPHTHALMIC_PHOTOGRAPHY
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    if study_date:
        ds.StudyDate = study_date.strftime("%Y%m%d")
    ds.Modality = "OP"
    if manufacturer:
        ds.Manufacturer = manufacturer
    # A sequence of undefined length before the attributes kept: the reader must skip it.
    code = Dataset()
    code.CodeValue = "T-AA610"
    code.CodingSchemeDesignator = "SRT"
    code.CodeMeaning = "Retina"
    ds.AnatomicRegionSequence = Sequence([code])
    if model:
        ds.ManufacturerModelName = model
    ds.PatientName = "Test^Patient"
    if patient_id:
        ds.PatientID = patient_id
    if eye_laterality:
        ds.Laterality = eye_laterality  # the series' attribute, for an image without its own
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = generate_uid()
    if laterality:
        ds.ImageLaterality = laterality
    samples = 1 if rgb.ndim == 2 else 3
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rgb.shape[:2]
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
        stack = np.zeros((frames, *rgb.shape), dtype=np.uint8)
        stack[0] = rgb
        pixels = stack
    else:
        pixels = rgb
    if syntax in (
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
    ):
        ds.PixelData = pixels.tobytes()
        ds.file_meta.TransferSyntaxUID = syntax
    elif syntax == RLELossless:
        ds.PixelData = pixels.tobytes()
        compress(ds, RLELossless, encoding_plugin="pydicom")
    elif syntax in (JPEGBaseline8Bit, JPEG2000, JPEG2000Lossless):
        frame_list = pixels if frames > 1 else [pixels]
        ds.PixelData = encapsulate([_pillow_encoded(f, syntax) for f in frame_list])
        ds.file_meta.TransferSyntaxUID = syntax
        if syntax == JPEGBaseline8Bit and samples == 3:
            ds.PhotometricInterpretation = photometric or "YBR_FULL_422"
        elif syntax == JPEG2000Lossless and samples == 3:
            ds.PhotometricInterpretation = "YBR_RCT"
        elif syntax == JPEG2000 and samples == 3:
            ds.PhotometricInterpretation = "YBR_ICT"
        ds.LossyImageCompression = "00" if syntax == JPEG2000Lossless else "01"
    elif syntax in _GDCM_SYNTAXES:
        ds.PixelData = pixels.tobytes()
        ds = _gdcm_transcoded(ds, syntax)
    else:
        raise ValueError(f"no encoder here for {syntax}")
    if rows is not None:
        ds.Rows = rows
    if columns is not None:
        ds.Columns = columns
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _pillow_encoded(frame: np.ndarray, syntax: str) -> bytes:
    """One frame as a JPEG or JPEG 2000 codestream, as a camera's encoder writes it."""
    buffer = io.BytesIO()
    image = Image.fromarray(frame)
    if syntax == JPEGBaseline8Bit:
        # Pillow's JPEG is YCbCr 4:2:0 by default; DICOM photographs are 4:2:2 at most.
        image.save(buffer, format="JPEG", quality=95, subsampling="4:2:2")
    else:
        image.save(
            buffer,
            format="JPEG2000",
            no_jp2=True,
            irreversible=syntax == JPEG2000,
            mct=1 if frame.ndim == 3 else 0,
        )
    return buffer.getvalue()


_GDCM_SYNTAXES = {
    JPEGLosslessSV1: gdcm.TransferSyntax.JPEGLosslessProcess14_1,
    JPEGLSLossless: gdcm.TransferSyntax.JPEGLSLossless,
}


def _gdcm_transcoded(ds: Dataset, syntax: str) -> Dataset:
    """``ds`` (uncompressed) re-encoded by GDCM: pydicom has no JPEG lossless encoder, and
    its JPEG-LS one needs a package the worker does not."""
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder, "in.dcm"), Path(folder, "out.dcm")
        ds.save_as(source, enforce_file_format=True)
        reader = gdcm.ImageReader()
        reader.SetFileName(str(source))
        if not reader.Read():
            raise RuntimeError("GDCM could not read the uncompressed file")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(_GDCM_SYNTAXES[syntax]))
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise RuntimeError(f"GDCM could not encode {syntax}")
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(target))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise RuntimeError("GDCM could not write the encoded file")
        return dcmread(target)


def imageless_bytes() -> bytes:
    """A DICOM file that holds no picture (as a structured report or a DICOMDIR)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    ds.PatientID = "DCM-PATIENT-0042"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def unsupported_syntax_bytes(image: Image.Image) -> bytes:
    """A DICOM file in a transfer syntax nothing here decodes (MPEG-4, as a video's)."""
    ds = dcmread(io.BytesIO(dicom_bytes(image, JPEGBaseline8Bit)))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.102"  # MPEG-4 AVC/H.264
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
