"""A batch's results as FHIR R4 resources: per patient a DiagnosticReport, per eye and per
image an Observation, and the Device (model) that graded them.

Terminology: real code systems where they have the concept, ours otherwise.

- SNOMED CT for the eye (``bodySite``): 8966001 |Left eye structure|, 18944008 |Right eye
  structure|.
- HL7's observation-category ``exam``, data-absent-reason ``unknown`` (ungradable) and
  ``error`` (failed), and UCUM ``1`` for a probability.
- DICOM UIDs as ``urn:dicom:uid`` identifiers for the ImagingStudy an image came from.
- Ours, under ``urn:retinaq:fhir:`` (URNs, so no deployment's host is baked into a code):
  the ICDR grade (LOINC and SNOMED have no code per ICDR grade), the NHS DESP codes (the
  programme publishes none as a FHIR CodeSystem), gradability and its reasons, outcomes,
  recall intervals, and what each Observation measures.

Every ``fullUrl`` is a ``urn:uuid`` derived from the batch and the thing it describes, so
a page fetched twice names each resource the same way.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from api.representations.json import iso
from common.db.tables import Image, Result
from common.screening.grades import GRADE_NAMES
from common.screening.patients import EyeOutcome, PatientOutcome
from common.screening.schemes import ICDR, MACULOPATHY_NOT_ASSESSED, GradingScheme

SYSTEM = "urn:retinaq:fhir"
ICDR_SYSTEM = f"{SYSTEM}:icdr-grade"
SCHEME_SYSTEMS = {ICDR: ICDR_SYSTEM, "nhs-desp": f"{SYSTEM}:nhs-desp"}
OBSERVATION_SYSTEM = f"{SYSTEM}:observation"
GRADABILITY_SYSTEM = f"{SYSTEM}:gradability"
REASON_SYSTEM = f"{SYSTEM}:ungradable-reason"
OUTCOME_SYSTEM = f"{SYSTEM}:screening-outcome"
RECALL_SYSTEM = f"{SYSTEM}:recall-interval"
MACULOPATHY_SYSTEM = f"{SYSTEM}:maculopathy"
PATIENT_SYSTEM = f"{SYSTEM}:programme"  # + ":<programme id>:patient"
IMAGE_SYSTEM = f"{SYSTEM}:image"
MODEL_SHA256_SYSTEM = f"{SYSTEM}:model-sha256"
SNOMED = "http://snomed.info/sct"
EYES = {"L": ("8966001", "Left eye structure"), "R": ("18944008", "Right eye structure")}
CATEGORY = {
    "coding": [
        {
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "exam",
            "display": "Exam",
        }
    ]
}
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
UCUM = "http://unitsofmeasure.org"
OUTCOME_TEXT = {
    "refer": "refer to an ophthalmologist",
    "recapture": "recapture: an eye could not be graded",
    "pending": "grading in progress",
}


def _urn(batch_id: uuid.UUID, *parts: str) -> str:
    return f"urn:uuid:{uuid.uuid5(batch_id, ':'.join(parts))}"


def _id(urn: str) -> str:
    return urn.removeprefix("urn:uuid:")


def _concept(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding], "text": display or code}


def _subject(programme_id: uuid.UUID, patient_id: str) -> dict[str, Any]:
    """A logical reference: the programme's patient id, which only its records resolve."""
    return {
        "type": "Patient",
        "identifier": {"system": f"{PATIENT_SYSTEM}:{programme_id}:patient", "value": patient_id},
    }


def device_urn(batch_id: uuid.UUID, sha256: str) -> str:
    """Where a model's Device sits in the Bundle."""
    return _urn(batch_id, "device", sha256)


def device_resource(batch_id: uuid.UUID, result: Result) -> dict[str, Any]:
    """The model file that produced results: name, version and SHA-256."""
    return {
        "resourceType": "Device",
        "id": _id(device_urn(batch_id, result.model_sha256)),
        "identifier": [{"system": MODEL_SHA256_SYSTEM, "value": result.model_sha256}],
        "status": "active",
        "deviceName": [{"name": result.model_name, "type": "model-name"}],
        "version": [{"value": result.model_version}],
        "type": {"text": "diabetic retinopathy grading model"},
    }


def study_reference(image: Image) -> dict[str, Any] | None:
    """The ImagingStudy an image came from, when its DICOM header named one."""
    uid = image.study_instance_uid
    if not uid:
        return None
    return {
        "type": "ImagingStudy",
        "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"},
    }


def _eye_site(laterality: str | None) -> dict[str, Any] | None:
    if laterality not in EYES:
        return None
    code, display = EYES[laterality]
    return _concept(SNOMED, code, display)


def image_urn(batch_id: uuid.UUID, image: Image) -> str:
    """Where an image's Observation sits in the Bundle."""
    return _urn(batch_id, "image", str(image.id))


def image_observation(
    programme_id: uuid.UUID, image: Image, result: Result | None, scheme: GradingScheme
) -> dict[str, Any]:
    """One image: its ICDR grade (and the scheme's code), gradability with reasons, and
    the referable probability; no value while it waits, ``error`` when grading failed."""
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "id": _id(image_urn(image.batch_id, image)),
        "identifier": [{"system": IMAGE_SYSTEM, "value": str(image.id)}],
        "status": "registered",
        "category": [CATEGORY],
        "code": _concept(OBSERVATION_SYSTEM, "image-grading", "Retinal image DR grading"),
        "subject": _subject(programme_id, image.patient_id or ""),
        "note": [{"text": f"image {image.filename}"}],
    }
    site = _eye_site(image.laterality)
    if site is not None:
        observation["bodySite"] = site
    study = study_reference(image)
    if study is not None:
        observation["derivedFrom"] = [study]
    if result is None:
        if image.error_code:
            observation["status"] = "cancelled"
            observation["dataAbsentReason"] = _concept(DATA_ABSENT, "error", image.error_code)
        return observation
    observation["status"] = "final"
    observation["issued"] = iso(result.created_at)
    observation["device"] = {"reference": device_urn(image.batch_id, result.model_sha256)}
    components: list[dict[str, Any]] = [
        {
            "code": _concept(OBSERVATION_SYSTEM, "gradability", "Gradability"),
            "valueCodeableConcept": _concept(
                GRADABILITY_SYSTEM, "gradable" if result.gradable else "ungradable"
            ),
        }
    ]
    components += [
        {
            "code": _concept(OBSERVATION_SYSTEM, "ungradable-reason", "Ungradable reason"),
            "valueCodeableConcept": _concept(REASON_SYSTEM, reason),
        }
        for reason in result.ungradable_reasons
    ]
    if result.grade is None or result.referable is None:
        observation["dataAbsentReason"] = _concept(DATA_ABSENT, "unknown", "ungradable image")
    else:
        grade = result.grade
        observation["valueCodeableConcept"] = _grade_concept(
            grade, scheme.code_for(grade, result.referable), scheme
        )
        components.append(
            {
                "code": _concept(OBSERVATION_SYSTEM, "referable-probability", "P(referable DR)"),
                "valueQuantity": {
                    "value": result.referable_probability,
                    "unit": "probability",
                    "system": UCUM,
                    "code": "1",
                },
            }
        )
        components.append(
            {
                "code": _concept(OBSERVATION_SYSTEM, "referable", "Referable DR"),
                "valueBoolean": result.referable,
            }
        )
    observation["component"] = components
    return observation


def _grade_concept(grade: int, code: str, scheme: GradingScheme) -> dict[str, Any]:
    """The ICDR grade, and the scheme's code beside it when the scheme is not ICDR."""
    concept = _concept(ICDR_SYSTEM, str(grade), GRADE_NAMES[grade])
    if scheme.name != ICDR:
        concept["coding"].append({"system": SCHEME_SYSTEMS[scheme.name], "code": code})
        concept["text"] = f"{GRADE_NAMES[grade]} ({code})"
    return concept


def eye_urn(batch_id: uuid.UUID, patient_id: str, side: str) -> str:
    """Where an eye's Observation sits in the Bundle."""
    return _urn(batch_id, "eye", patient_id, side)


def eye_observation(
    programme_id: uuid.UUID,
    batch_id: uuid.UUID,
    outcome: PatientOutcome,
    side: str,
    eye: EyeOutcome,
    image_urns: Mapping[str, str],
) -> dict[str, Any]:
    """One eye: its worst gradable image's grade and the scheme's code, built on the
    image Observations."""
    urn = eye_urn(batch_id, outcome.patient_id, side)
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "id": _id(urn),
        "status": "registered" if outcome.outcome == "pending" else "final",
        "category": [CATEGORY],
        "code": _concept(OBSERVATION_SYSTEM, "eye-grading", "Eye DR grading"),
        "subject": _subject(programme_id, outcome.patient_id),
        "hasMember": [{"reference": image_urns[image_id]} for image_id in eye.images],
    }
    site = _eye_site(side)
    if site is not None:
        observation["bodySite"] = site
    if outcome.outcome == "pending":
        return observation
    if eye.grade is None or eye.code is None:
        observation["dataAbsentReason"] = _concept(DATA_ABSENT, "unknown", "ungradable eye")
        observation["interpretation"] = [
            _concept(SCHEME_SYSTEMS[outcome.scheme.name], outcome.scheme.ungradable_code)
        ]
    else:
        observation["valueCodeableConcept"] = _grade_concept(eye.grade, eye.code, outcome.scheme)
    return observation


def conclusion(outcome: PatientOutcome) -> str:
    """The report's conclusion in words: code, action, recall, maculopathy."""
    if outcome.outcome == "pending":
        return OUTCOME_TEXT["pending"]
    action = (
        f"rescreen in {outcome.recall_months} months"
        if outcome.recall_months is not None
        else OUTCOME_TEXT[outcome.outcome]
    )
    text = f"{outcome.code}: {action}"
    if outcome.scheme.name != ICDR:
        text += "; maculopathy (M) not assessed"
    return text


def diagnostic_report(
    programme_id: uuid.UUID,
    batch_id: uuid.UUID,
    outcome: PatientOutcome,
    eye_urns: Iterable[str],
    studies: Iterable[dict[str, Any]],
) -> dict[str, Any]:
    """One patient's screening: coded conclusion (scheme code, referable or not, recall).

    The model is named by each Observation's ``device``: R4 lets a report's ``performer``
    be a person, role, organisation or care team, never a Device.
    """
    urn = _urn(batch_id, "report", outcome.patient_id)
    scheme = outcome.scheme
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": _id(urn),
        "identifier": [{"system": f"{SYSTEM}:batch:{batch_id}", "value": outcome.patient_id}],
        "status": "partial" if outcome.outcome == "pending" else "final",
        "code": _concept(OBSERVATION_SYSTEM, "dr-screening", "Diabetic retinopathy screening"),
        "subject": _subject(programme_id, outcome.patient_id),
        "result": [{"reference": eye} for eye in eye_urns],
        "conclusion": conclusion(outcome),
    }
    study_refs = list(studies)
    if study_refs:
        report["imagingStudy"] = study_refs
    if outcome.outcome != "pending" and outcome.code is not None:
        codes = [
            _concept(SCHEME_SYSTEMS[scheme.name], outcome.code),
            _concept(
                OUTCOME_SYSTEM,
                "referable" if outcome.outcome == "refer" else "not-referable",
                "Referable DR" if outcome.outcome == "refer" else "Not referable",
            ),
            _concept(OUTCOME_SYSTEM, outcome.outcome.partition("_")[0], outcome.outcome),
        ]
        if outcome.recall_months is not None:
            codes.append(
                _concept(
                    RECALL_SYSTEM,
                    f"{outcome.recall_months}m",
                    f"Rescreen in {outcome.recall_months} months",
                )
            )
        if scheme.name != ICDR:
            codes.append(
                _concept(MACULOPATHY_SYSTEM, MACULOPATHY_NOT_ASSESSED, "Maculopathy not assessed")
            )
        report["conclusionCode"] = codes
    return report


def entry(urn: str, resource: dict[str, Any], mode: str) -> dict[str, Any]:
    """A searchset entry: ``match`` for the reports, ``include`` for what they cite."""
    return {"fullUrl": urn, "resource": resource, "search": {"mode": mode}}
