"""A batch's results for a programme's own systems: a FHIR R4 Bundle and a CSV file.

``GET /v1/batches/<id>/fhir`` pages by patient like ``/patients`` (``Bundle.link`` next,
a sealed cursor); ``GET /v1/batches/<id>/results.csv`` streams every image in one
response. Both speak the programme's grading scheme. The endpoints are registered on the
``v1`` blueprint itself (``v1.batch_fhir``, ``v1.batch_results_csv``), the names every
client and document uses.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, jsonify, request, stream_with_context, url_for
from sqlalchemy import select

from api.audit import audit_read
from api.docs.schemas import FhirBundle, PageQuery
from api.docs.spec import Body, operation
from api.errors import not_found
from api.hooks.auth import scope
from api.pagination import decode_text_cursor, encode_text_cursor, parse_limit
from api.representations import fhir
from api.representations.csv import COLUMNS, csv_lines, result_record
from api.representations.json import iso, self_url
from api.state import api_state, db_session
from common.db.tables import Batch, Image, Result, utcnow
from common.screening.patients import EyeImage, PatientOutcome, roll_up
from common.screening.programmes import eye_images, previous_codes, programme_scheme
from common.screening.schemes import GradingScheme

FHIR_JSON = "application/fhir+json"
CSV_CHUNK = 500
_FHIR = "v1.batch_fhir"


def register(v1: Blueprint) -> None:
    """Add the export routes to the ``v1`` blueprint under their documented names."""
    v1.add_url_rule("/batches/<uuid:batch_id>/fhir", "batch_fhir", batch_fhir)
    v1.add_url_rule("/batches/<uuid:batch_id>/results.csv", "batch_results_csv", batch_results_csv)


def _owned_batch(batch_id: uuid.UUID) -> Batch:
    batch = scope().batch(batch_id)
    if batch is None:
        raise not_found("batch")
    return batch


def _outcomes(
    batch: Batch, scheme: GradingScheme, by_patient: dict[str, list[EyeImage]]
) -> dict[str, PatientOutcome]:
    """Each patient's roll-up under the scheme, their previous screening considered."""
    previous = previous_codes(db_session(), batch.programme_id, batch.id, list(by_patient), scheme)
    return {
        patient_id: roll_up(patient_id, images, scheme, previous.get(patient_id))
        for patient_id, images in by_patient.items()
    }


@operation(
    tag="results",
    query=PageQuery,
    responses={200: Body(FHIR_JSON, FhirBundle)},
    errors=(400, 404),
)
def batch_fhir(batch_id: uuid.UUID) -> Response:
    """A page of patients as a FHIR R4 searchset Bundle: DiagnosticReports, Observations,
    Devices; ``link`` ``next`` while more patients follow."""
    settings = api_state().settings
    limit = parse_limit(
        request.args.get("limit"), settings.page_size_default, settings.page_size_max
    )
    after = decode_text_cursor(request.args.get("cursor"), _FHIR, batch_id)
    batch = _owned_batch(batch_id)
    scheme = programme_scheme(db_session(), batch.programme_id)
    patient_ids, rows = scope().patients_page(batch, after, limit)
    outcomes = _outcomes(batch, scheme, eye_images(rows))
    by_patient: dict[str, list[tuple[Image, Result | None]]] = {}
    for image, result in rows:
        by_patient.setdefault(image.patient_id or "", []).append((image, result))

    matches: list[dict[str, Any]] = []
    includes: list[dict[str, Any]] = []
    devices: dict[str, dict[str, Any]] = {}
    for patient_id, images in by_patient.items():
        outcome = outcomes[patient_id]
        image_urns: dict[str, str] = {}
        studies: dict[str, dict[str, Any]] = {}
        for image, result in images:
            urn = fhir.image_urn(batch.id, image)
            image_urns[str(image.id)] = urn
            observation = fhir.image_observation(batch.programme_id, image, result, scheme)
            includes.append(fhir.entry(urn, observation, "include"))
            if result is not None:
                device = fhir.device_urn(batch.id, result.model_sha256)
                devices.setdefault(device, fhir.device_resource(batch.id, result))
            study = fhir.study_reference(image)
            if study is not None:
                studies[study["identifier"]["value"]] = study
        eye_urns = []
        for side, eye in sorted(outcome.eyes.items()):
            urn = fhir.eye_urn(batch.id, patient_id, side)
            eye_urns.append(urn)
            resource = fhir.eye_observation(
                batch.programme_id, batch.id, outcome, side, eye, image_urns
            )
            includes.append(fhir.entry(urn, resource, "include"))
        report = fhir.diagnostic_report(
            batch.programme_id, batch.id, outcome, eye_urns, studies.values()
        )
        matches.append(fhir.entry(f"urn:uuid:{report['id']}", report, "match"))
    includes += [fhir.entry(urn, device, "include") for urn, device in devices.items()]

    links = [{"relation": "self", "url": self_url()}]
    if len(patient_ids) > limit:
        links.append(
            {
                "relation": "next",
                "url": url_for(
                    _FHIR,
                    batch_id=batch.id,
                    limit=limit,
                    cursor=encode_text_cursor(patient_ids[limit - 1], _FHIR, batch.id),
                    _external=True,
                ),
            }
        )
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "timestamp": iso(utcnow()),
        "link": links,
        "entry": matches + includes,
    }
    audit_read("results.read", "batch", batch.id, {"format": "fhir", "patients": len(matches)})
    response = jsonify(bundle)
    response.mimetype = FHIR_JSON
    return response


def _all_outcomes(batch: Batch, scheme: GradingScheme) -> dict[str, PatientOutcome]:
    """Every patient of the batch rolled up, from a narrow query (no image rows kept)."""
    by_patient: dict[str, list[EyeImage]] = {}
    rows = db_session().execute(
        select(
            Image.id,
            Image.patient_id,
            Image.laterality,
            Image.state,
            Result.grade,
            Result.referable,
        )
        .outerjoin(Result, Result.image_id == Image.id)
        .where(
            Image.batch_id == batch.id,
            Image.programme_id == batch.programme_id,
            Image.patient_id.is_not(None),
        )
    )
    for image_id, patient_id, laterality, state, grade, referable in rows:
        by_patient.setdefault(patient_id or "", []).append(
            EyeImage(str(image_id), laterality, state.value, grade, referable)
        )
    return _outcomes(batch, scheme, by_patient)


@operation(
    tag="results",
    responses={200: Body("text/csv", {"type": "string", "contentMediaType": "text/csv"})},
    errors=(404,),
)
def batch_results_csv(batch_id: uuid.UUID) -> Response:
    """Every image of the batch as CSV, streamed in submission order, formula-safe."""
    batch = _owned_batch(batch_id)
    scheme = programme_scheme(db_session(), batch.programme_id)
    patients = _all_outcomes(batch, scheme)
    audit_read("results.read", "batch", batch.id, {"format": "csv"})
    # Read again inside the stream: the audit's commit expired the ORM row.
    batch_ref = batch.id

    def rows() -> Iterator[list[Any]]:
        owned = scope().batch(batch_ref)
        if owned is None:  # purged while the response was starting
            return
        after: uuid.UUID | None = None
        while True:
            page = scope().images_page(owned, after, CSV_CHUNK)
            for image, result in page[:CSV_CHUNK]:
                patient = patients.get(image.patient_id) if image.patient_id else None
                yield result_record(image, result, scheme, patient)
            if len(page) <= CSV_CHUNK:
                return
            after = page[CSV_CHUNK - 1][0].id
            # Each chunk's rows are done with: let them go rather than fill the session.
            db_session().expunge_all()

    response = Response(stream_with_context(csv_lines(COLUMNS, rows())), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="batch-{batch_ref}.csv"'
    return response
