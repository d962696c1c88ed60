"""GET /v1/batches/<id>/fhir and /results.csv over HTTP, on batches the worker graded for
real: FHIR validated by fhir.resources, CSV formula-safe and in the CLI's columns, both
in the programme's grading scheme and invisible to other programmes."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from flask.testing import FlaskClient
from PIL import ImageFilter
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from api.representations.csv import SCHEME_COLUMNS
from cli.client import RESULT_COLUMNS
from common.db.tables import Image, Programme
from common.screening.programmes import save_scheme
from common.screening.schemes import NHS_DESP, build_scheme
from lab.synthetic import encode_image, generate_fundus
from worker.grading.pipeline import grade_images
from worker.runtime import WorkerRuntime

# PA: two healthy eyes; PB: proliferative both eyes; PC: one blurred (ungradable) eye;
# "=cmd" is a patient id a spreadsheet would run; loose.jpg names no patient.
FILES = [
    ("a-l.jpg", 0, "PA", "L"),
    ("a-r.jpg", 0, "PA", "R"),
    ("b-l.jpg", 4, "PB", "L"),
    ("b-r.jpg", 4, "PB", "R"),
    ("c-l.jpg", None, "PC", "L"),
    ("d-l.jpg", 0, "=cmd", "L"),
    ("loose.jpg", 0, None, None),
]


def _submit_graded(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    runtime: WorkerRuntime,
    sessions: sessionmaker[Session],
    files: list[tuple[str, int | None, str | None, str | None]] = FILES,
) -> dict[str, Any]:
    parts = []
    for i, (name, grade, _, _) in enumerate(files):
        if grade is None:
            blurred = generate_fundus(0, 900 + i, 512).filter(ImageFilter.GaussianBlur(6))
            parts.append((io.BytesIO(encode_image(blurred)), name))
        else:
            parts.append((io.BytesIO(fundus_jpeg(grade=grade, seed=900 + i)), name))
    metadata = "filename,patient_id,laterality\n" + "".join(
        f"{name},{patient},{side}\n" for name, _, patient, side in files if patient
    )
    response = client.post(
        "/v1/batches", headers=auth, data={"images": parts, "metadata": metadata}
    )
    assert response.status_code == 202, response.get_json()
    batch = response.get_json()
    with sessions() as session:
        ids = session.scalars(
            select(Image.id).where(Image.batch_id == uuid.UUID(batch["id"]))
        ).all()
    grade_images(runtime, list(ids))
    return batch


def _bundle_pages(client: FlaskClient, url: str, auth: dict[str, str]) -> list[dict[str, Any]]:
    pages = []
    while url:
        response = client.get(url, headers=auth)
        assert response.status_code == 200, response.get_json()
        assert response.mimetype == "application/fhir+json"
        body = response.get_json()
        Bundle.model_validate(body)  # raises on anything R4(B) does not allow
        pages.append(body)
        url = next((link["url"] for link in body["link"] if link["relation"] == "next"), "")
    return pages


def _reports(pages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        entry["resource"]["subject"]["identifier"]["value"]: entry["resource"]
        for page in pages
        for entry in page["entry"]
        if entry["resource"]["resourceType"] == "DiagnosticReport"
    }


def _codes(report: dict[str, Any]) -> set[str]:
    return {c["code"] for concept in report.get("conclusionCode", []) for c in concept["coding"]}


def _set_scheme(sessions: sessionmaker[Session], name: str, **recall: int) -> None:
    with sessions.begin() as session:
        programme = session.scalar(select(Programme).where(Programme.name == name))
        assert programme is not None
        save_scheme(session, programme.id, build_scheme(NHS_DESP, recall=recall or None))


def test_fhir_bundle_pages_validate_and_carry_reports_observations_and_the_model(
    client: FlaskClient,
    auth: dict[str, str],
    make_programme: Callable[[str], dict[str, str]],
    fundus_jpeg: Callable[..., bytes],
    runtime: WorkerRuntime,
    sessions: sessionmaker[Session],
) -> None:
    batch = _submit_graded(client, auth, fundus_jpeg, runtime, sessions)
    url = f"/v1/batches/{batch['id']}/fhir?limit=2"
    pages = _bundle_pages(client, url, auth)
    assert len(pages) == 2, "four patients at two a page"
    assert pages[0]["link"][1]["url"].startswith("http://localhost/v1/batches/")
    reports = _reports(pages)
    assert sorted(reports) == ["=cmd", "PA", "PB", "PC"], "loose.jpg names no patient"

    assert reports["PA"]["conclusion"] == "ICDR0: rescreen in 12 months"
    assert {"ICDR0", "not-referable", "12m"} <= _codes(reports["PA"])
    assert {"ICDR4", "referable"} <= _codes(reports["PB"])
    assert "12m" not in _codes(reports["PB"])
    assert {"ungradable", "recapture"} <= _codes(reports["PC"])

    resources = [entry["resource"] for page in pages for entry in page["entry"]]
    by_url = {entry["fullUrl"]: entry["resource"] for page in pages for entry in page["entry"]}
    for report in reports.values():
        for result in report["result"]:
            eye = by_url[result["reference"]]
            assert eye["code"]["coding"][0]["code"] == "eye-grading"
            for member in eye["hasMember"]:
                assert by_url[member["reference"]]["code"]["coding"][0]["code"] == "image-grading"
    images = [r for r in resources if r["resourceType"] == "Observation" and "identifier" in r]
    assert len(images) == 6
    ungradable = next(r for r in images if "dataAbsentReason" in r)
    assert ungradable["dataAbsentReason"]["coding"][0]["code"] == "unknown"
    assert ungradable["bodySite"]["coding"][0] == {
        "system": "http://snomed.info/sct",
        "code": "8966001",
        "display": "Left eye structure",
    }
    components = {c["code"]["coding"][0]["code"]: c for c in ungradable["component"]}
    assert components["gradability"]["valueCodeableConcept"]["coding"][0]["code"] == "ungradable"
    assert "ungradable-reason" in components
    graded = next(r for r in images if "valueCodeableConcept" in r)
    probability = next(
        c for c in graded["component"] if c["code"]["coding"][0]["code"] == "referable-probability"
    )
    assert 0.0 <= probability["valueQuantity"]["value"] <= 1.0

    devices = [r for r in resources if r["resourceType"] == "Device"]
    assert devices, "the model that graded the images"
    status = client.get(f"/v1/batches/{batch['id']}", headers=auth).get_json()
    assert devices[0]["identifier"][0]["value"] == status["model"]["sha256"]
    assert devices[0]["version"][0]["value"] == status["model"]["version"]
    assert graded["device"]["reference"] in by_url

    again = _bundle_pages(client, url, auth)
    assert [e["fullUrl"] for p in again for e in p["entry"]] == [
        e["fullUrl"] for p in pages for e in p["entry"]
    ], "resources keep their names from one fetch to the next"

    south = make_programme("South")
    foreign = client.get(f"/v1/batches/{batch['id']}/fhir", headers=south)
    missing = client.get(f"/v1/batches/{uuid.uuid4()}/fhir", headers=south)
    assert foreign.status_code == missing.status_code == 404
    assert foreign.get_json() == missing.get_json()
    forged = client.get(f"/v1/batches/{batch['id']}/fhir?cursor=%%%", headers=auth)
    assert forged.status_code == 400


def _csv(client: FlaskClient, batch_id: str, auth: dict[str, str]) -> list[dict[str, str]]:
    response = client.get(f"/v1/batches/{batch_id}/results.csv", headers=auth)
    assert response.status_code == 200
    assert response.is_streamed
    assert response.mimetype == "text/csv"
    text = response.get_data(as_text=True)
    reader = csv.DictReader(io.StringIO(text))
    assert tuple(reader.fieldnames or ()) == RESULT_COLUMNS + SCHEME_COLUMNS
    return list(reader)


def test_results_csv_streams_the_clis_columns_formula_safe(
    client: FlaskClient,
    auth: dict[str, str],
    make_programme: Callable[[str], dict[str, str]],
    fundus_jpeg: Callable[..., bytes],
    runtime: WorkerRuntime,
    sessions: sessionmaker[Session],
) -> None:
    batch = _submit_graded(client, auth, fundus_jpeg, runtime, sessions)
    rows = _csv(client, batch["id"], auth)
    assert [row["filename"] for row in rows] == [name for name, *_ in FILES]
    by_name = {row["filename"]: row for row in rows}
    assert by_name["d-l.jpg"]["patient_id"] == "'=cmd", "a formula becomes text"
    assert by_name["a-l.jpg"]["scheme"] == "icdr"
    assert by_name["a-l.jpg"]["patient_outcome"] == "rescreen_12m"
    assert by_name["b-l.jpg"]["patient_outcome"] == "refer"
    assert by_name["c-l.jpg"]["gradable"] == "false"
    assert by_name["c-l.jpg"]["scheme_code"] == "ungradable"
    assert by_name["loose.jpg"]["patient_outcome"] == ""
    assert by_name["a-l.jpg"]["model_sha256"] and by_name["a-l.jpg"]["grade"] == "0"

    south = make_programme("South")
    assert client.get(f"/v1/batches/{batch['id']}/results.csv", headers=south).status_code == 404


def test_results_csv_larger_than_a_chunk(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("api.v1.exports.CSV_CHUNK", 3)
    data = fundus_jpeg(grade=0, seed=1)
    parts = [(io.BytesIO(data), f"img-{i:02d}.jpg") for i in range(8)]
    batch = client.post("/v1/batches", headers=auth, data={"images": parts}).get_json()
    rows = _csv(client, batch["id"], auth)
    assert [row["filename"] for row in rows] == [f"img-{i:02d}.jpg" for i in range(8)]
    assert {row["state"] for row in rows} == {"queued"}


def test_the_nhs_scheme_changes_codes_and_recall_in_every_export(
    client: FlaskClient,
    auth: dict[str, str],
    make_programme: Callable[[str], dict[str, str]],
    fundus_jpeg: Callable[..., bytes],
    runtime: WorkerRuntime,
    sessions: sessionmaker[Session],
) -> None:
    # Another programme screened its own "PA" first: not North's patient's history.
    south = make_programme("South")
    _submit_graded(client, south, fundus_jpeg, runtime, sessions, [("s.jpg", 0, "PA", "L")])
    first = _submit_graded(client, auth, fundus_jpeg, runtime, sessions)
    _set_scheme(sessions, "North")

    patients = client.get(f"/v1/batches/{first['id']}/patients", headers=auth).get_json()
    rows = {row["patient_id"]: row for row in patients["items"]}
    assert rows["PA"]["outcome"] == "rescreen_12m", "South's R0 is not North's history"
    assert rows["PA"]["scheme"] == {
        "name": "nhs-desp",
        "code": "R0",
        "eyes": {"L": "R0", "R": "R0"},
        "maculopathy": "not_assessed",
        "recall_months": 12,
    }
    assert rows["PB"]["scheme"]["code"] == "R3A"
    assert rows["PC"]["scheme"]["code"] == "U"

    # PA's second screening, R0 again: the 24-month recall for two consecutive R0.
    second = _submit_graded(
        client, auth, fundus_jpeg, runtime, sessions, [("a2-l.jpg", 0, "PA", "L")]
    )
    again = client.get(f"/v1/batches/{second['id']}/patients", headers=auth).get_json()
    assert again["items"][0]["outcome"] == "rescreen_24m"
    assert again["items"][0]["scheme"]["recall_months"] == 24

    reports = _reports(_bundle_pages(client, f"/v1/batches/{second['id']}/fhir", auth))
    assert reports["PA"]["conclusion"] == (
        "R0: rescreen in 24 months; maculopathy (M) not assessed"
    )
    assert {"R0", "24m", "not_assessed"} <= _codes(reports["PA"])
    assert "M0" not in _codes(reports["PA"])

    rows_csv = {row["filename"]: row for row in _csv(client, second["id"], auth)}
    assert rows_csv["a2-l.jpg"]["scheme_code"] == "R0"
    assert rows_csv["a2-l.jpg"]["recall_months"] == "24"
    assert rows_csv["a2-l.jpg"]["maculopathy"] == "not_assessed"

    # A programme that recalls every R0 at 24 months, first screening or not.
    _set_scheme(sessions, "North", r0=24, r0_repeat=24)
    first_rows = {r["filename"]: r for r in _csv(client, first["id"], auth)}
    assert first_rows["a-l.jpg"]["patient_outcome"] == "rescreen_24m"
    assert first_rows["b-l.jpg"]["scheme_code"] == "R3A"


def test_fhir_names_the_imaging_study_dicom_gave(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    runtime: WorkerRuntime,
    sessions: sessionmaker[Session],
) -> None:
    files = [("a-l.jpg", 0, "PA", "L"), ("a-r.jpg", 0, "PA", "R"), ("b-l.jpg", 0, "PB", "L")]
    batch = _submit_graded(client, auth, fundus_jpeg, runtime, sessions, files)
    uid = "1.2.826.0.1.3680043.8.498.12345"
    # What DICOM input stores from the header's StudyInstanceUID (common/imaging/dicom.py).
    with sessions.begin() as session:
        session.execute(
            update(Image).where(Image.patient_id == "PA").values(study_instance_uid=uid)
        )
    pages = _bundle_pages(client, f"/v1/batches/{batch['id']}/fhir", auth)
    reports = _reports(pages)
    study = {
        "type": "ImagingStudy",
        "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"},
    }
    assert reports["PA"]["imagingStudy"] == [study], "one study for both eyes, named once"
    assert "imagingStudy" not in reports["PB"]
    observations = [
        entry["resource"]
        for entry in pages[0]["entry"]
        if entry["resource"]["resourceType"] == "Observation" and "identifier" in entry["resource"]
    ]
    assert sum(o.get("derivedFrom") == [study] for o in observations) == 2
