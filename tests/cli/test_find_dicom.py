"""`retinaq submit` finds DICOM photographs: by suffix, and on DICOM media by content."""

from __future__ import annotations

from pathlib import Path

from cli.client import find_images
from lab.synthetic import generate_fundus
from tests.dicom_files import dicom_bytes


def test_dicom_files_are_found_by_suffix_or_content(tmp_path: Path) -> None:
    photo = dicom_bytes(generate_fundus(0, seed=3, size=64))
    (tmp_path / "P1").mkdir()
    (tmp_path / "P1" / "left.DCM").write_bytes(photo)
    (tmp_path / "P1" / "IM000001").write_bytes(photo)  # DICOM media name files so
    (tmp_path / "DICOMDIR").write_bytes(photo)  # the media's index, never a photograph
    (tmp_path / "P1" / "README").write_bytes(b"notes, not a photograph")
    (tmp_path / "P1" / "notes.txt").write_bytes(photo)
    names = [found.name for found in find_images([tmp_path])]
    assert names == ["P1/IM000001", "P1/left.DCM"]
