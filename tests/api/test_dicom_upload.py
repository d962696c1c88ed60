"""DICOM Ophthalmic Photography through the HTTP API and the real grading pipeline: every
supported transfer syntax graded, the header's patient, eye, study and camera kept, the
metadata CSV winning over the header, and a file nothing decodes failing alone."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from datetime import date
from typing import Any

import pytest
from flask.testing import FlaskClient
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    RLELossless,
)
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import encode_multipart

from common.db.tables import Image
from lab.synthetic import generate_fundus
from tests.dicom_files import STUDY_UID, dicom_bytes, unsupported_syntax_bytes
from worker.grading.pipeline import grade_images
from worker.runtime import WorkerRuntime

SYNTAXES = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEG2000Lossless,
    JPEG2000,
)


def _post_batch(
    client: FlaskClient,
    auth: dict[str, str],
    files: list[tuple[bytes, str]],
    metadata: str | None = None,
) -> dict[str, Any]:
    """POST /v1/batches with the body encoded in memory: the test client would spool one
    over 500 KB to a temporary file it never closes."""
    parts: MultiDict[str, Any] = MultiDict(
        [("images", FileStorage(io.BytesIO(data), filename=name)) for data, name in files]
    )
    if metadata is not None:
        parts.add("metadata", metadata)
    boundary, body = encode_multipart(parts)
    response = client.post(
        "/v1/batches",
        headers=auth,
        data=body,
        content_type=f'multipart/form-data; boundary="{boundary}"',
    )
    assert response.status_code == 202, response.get_json()
    batch: dict[str, Any] = response.get_json()
    return batch


def _rows(client: FlaskClient, auth: dict[str, str], url: str) -> dict[str, dict]:
    return {row["filename"]: row for row in client.get(url, headers=auth).get_json()["items"]}


def test_dicom_in_every_supported_syntax_is_graded_with_its_header_metadata(
    client: FlaskClient,
    auth: dict[str, str],
    runtime: WorkerRuntime,
    sessions: sessionmaker[Session],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    fundus = generate_fundus(1, seed=41)
    # Named as cameras and PACS exports name them: by content, not by a .dcm suffix.
    files = [
        (dicom_bytes(fundus, syntax), f"P1/{i:02d}-{syntax.keyword}")
        for i, syntax in enumerate(SYNTAXES)
    ]
    files.append((dicom_bytes(fundus, RLELossless, laterality="R", frames=2), "P1/right.dcm"))
    files.append((unsupported_syntax_bytes(fundus), "P1/video.dcm"))
    # 60,000 x 60,000 declared in 0.3 MB: refused by the worker before a pixel is decoded.
    bomb = dicom_bytes(fundus, RLELossless, rows=60_000, columns=60_000)
    files.append((bomb, "P1/bomb.dcm"))
    batch = _post_batch(client, auth, files)

    listed = _rows(client, auth, batch["links"]["images"])
    for row in listed.values():
        assert row["patient_id"] == "DCM-PATIENT-0042"
    assert listed["P1/right.dcm"]["laterality"] == "R"
    assert {row["laterality"] for name, row in listed.items() if name != "P1/right.dcm"} == {"L"}
    with sessions() as session:
        stored = session.execute(
            select(Image.study_instance_uid, Image.study_date, Image.device).distinct()
        ).all()
        ids = list(session.scalars(select(Image.id)))
    assert stored == [(STUDY_UID, date(2026, 3, 14), "Topcon TRC-NW400")]
    assert {
        (row["study_instance_uid"], row["study_date"], row["device"]) for row in listed.values()
    } == {(STUDY_UID, "2026-03-14", "Topcon TRC-NW400")}, "the client sees them too"

    report = grade_images(runtime, ids)
    assert (report.graded + report.ungradable, report.failed) == (len(SYNTAXES) + 1, 2)
    results = _rows(client, auth, batch["links"]["results"])
    for name, row in results.items():
        if name in ("P1/video.dcm", "P1/bomb.dcm"):
            continue
        assert row["state"] in ("graded", "ungradable"), (name, row)
    # Lossless copies of one photograph are graded identically.
    lossless = {
        results[f"P1/{i:02d}-{syntax.keyword}"]["grade"]
        for i, syntax in enumerate(SYNTAXES)
        if syntax not in (JPEGBaseline8Bit, JPEG2000)
    }
    assert len(lossless) == 1
    assert results["P1/video.dcm"]["state"] == "failed"
    assert results["P1/video.dcm"]["error"]["code"] == "unsupported_transfer_syntax"
    assert results["P1/bomb.dcm"]["error"]["code"] == "too_many_pixels"

    patients = client.get(batch["links"]["patients"], headers=auth).get_json()["items"]
    assert [p["patient_id"] for p in patients] == ["DCM-PATIENT-0042"]
    assert set(patients[0]["eyes"]) == {"L", "R"}

    # Neither the upload nor the grading logged a value from a header.
    for value in ("DCM-PATIENT-0042", STUDY_UID, "Topcon", "TRC-NW400", "20260314"):
        assert value not in caplog.text


def test_the_metadata_csv_wins_over_the_header(client: FlaskClient, auth: dict[str, str]) -> None:
    fundus = generate_fundus(0, seed=42, size=128)
    files = [
        (dicom_bytes(fundus, JPEGBaseline8Bit), "csv-patient.dcm"),
        (dicom_bytes(fundus, JPEGBaseline8Bit), "csv-eye.dcm"),
        (dicom_bytes(fundus, JPEGBaseline8Bit), "header-only.dcm"),
        (dicom_bytes(fundus, patient_id=None, laterality=None), "bare.dcm"),
    ]
    metadata = "filename,patient_id,laterality\ncsv-patient.dcm,CSV-7,\ncsv-eye.dcm,,R\n"
    batch = _post_batch(client, auth, files, metadata)
    listed = _rows(client, auth, batch["links"]["images"])
    facts = {name: (row["patient_id"], row["laterality"]) for name, row in listed.items()}
    assert facts == {
        "csv-patient.dcm": ("CSV-7", "L"),  # the CSV's patient, the header's eye
        "csv-eye.dcm": ("DCM-PATIENT-0042", "R"),  # the header's patient, the CSV's eye
        "header-only.dcm": ("DCM-PATIENT-0042", "L"),
        "bare.dcm": (None, None),
    }


def test_other_formats_keep_no_study(
    submit: Callable, fundus_jpeg: Callable[..., bytes], sessions: sessionmaker[Session]
) -> None:
    # A JPEG whose bytes happen to hold "DICM" further in is not read as DICOM.
    submit([(fundus_jpeg(seed=1) + b"\x00" * 128 + b"DICM", "photo.jpg")])
    with sessions() as session:
        row = session.execute(
            select(Image.patient_id, Image.study_instance_uid, Image.study_date, Image.device)
        ).one()
    assert tuple(row) == (None, None, None, None)
