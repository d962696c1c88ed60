"""Response shapes: models hold persistence, this module decides what clients see."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from flask import request, url_for

from api.access import BatchSummary
from common.db.tables import Batch, Image, Result
from common.screening.patients import PatientOutcome
from common.screening.quality import QualityReport
from common.screening.schemes import MACULOPATHY_NOT_ASSESSED


def iso(moment: datetime | None) -> str | None:
    """RFC 3339 in UTC; SQLite hands back naive datetimes, which we wrote as UTC."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def self_url() -> str:
    """The current resource's URL, rebuilt with url_for from its endpoint and arguments."""
    assert request.endpoint is not None
    base = url_for(request.endpoint, **(request.view_args or {}), _external=True)
    # The query is appended, never passed to url_for as keywords: a client's ``_external``,
    # ``_method``, ``endpoint`` or ``batch_id`` parameter would otherwise steer the build.
    query = urlencode(list(request.args.items(multi=True)))
    return f"{base}?{query}" if query else base


def batch_links(batch: Batch) -> dict[str, str]:
    """Where a client goes next from a batch."""
    links = {
        "self": url_for("v1.batches.get_batch", batch_id=batch.id, _external=True),
        "results": url_for("v1.batches.list_results", batch_id=batch.id, _external=True),
        "images": url_for("v1.batches.list_images", batch_id=batch.id, _external=True),
        "patients": url_for("v1.batches.list_patients", batch_id=batch.id, _external=True),
    }
    if batch.closed_at is None:
        links["add_images"] = url_for("v1.batches.add_images", batch_id=batch.id, _external=True)
        links["close"] = url_for("v1.batches.close_batch", batch_id=batch.id, _external=True)
    return links


def batch_brief(batch: Batch) -> dict[str, Any]:
    """What creation and listings return."""
    return {
        "id": str(batch.id),
        "reference": batch.reference,
        "state": batch.state.value,
        "image_count": batch.image_count,
        "explain": batch.explain,
        "model": (
            {
                "name": batch.model_name,
                "version": batch.model_version,
                "sha256": batch.model_sha256,
                # another model graded some images too: each result names its own
                "mixed": batch.models_mixed,
            }
            if batch.model_sha256
            else None
        ),
        "created_at": iso(batch.created_at),
        "closed_at": iso(batch.closed_at),
        "completed_at": iso(batch.completed_at),
        "links": batch_links(batch),
    }


def batch_status(batch: Batch, summary: BatchSummary) -> dict[str, Any]:
    """The full status: counts per image state, grade distribution, referable count."""
    return {
        **batch_brief(batch),
        "counts": summary.state_counts,
        "grades": {str(grade): count for grade, count in summary.grade_counts.items()},
        "referable_count": summary.referable_count,
    }


def model_of(result: Result) -> dict[str, str]:
    """Which exact model file produced a result."""
    return {
        "name": result.model_name,
        "version": result.model_version,
        "sha256": result.model_sha256,
    }


def image_record(image: Image) -> dict[str, Any]:
    """An image's submission facts and state."""
    error = {"code": image.error_code, "message": image.error_message} if image.error_code else None
    return {
        "id": str(image.id),
        "batch_id": str(image.batch_id),
        "filename": image.filename,
        "sha256": image.sha256,
        "size_bytes": image.size_bytes,
        "patient_id": image.patient_id,
        "laterality": image.laterality,
        # From a DICOM header, when the image was one and the metadata CSV did not say.
        "study_instance_uid": image.study_instance_uid,
        "study_date": image.study_date.isoformat() if image.study_date else None,
        "device": image.device,
        "state": image.state.value,
        "attempts": image.attempts,
        "error": error,
        "created_at": iso(image.created_at),
        "finished_at": iso(image.finished_at),
    }


def grading(result: Result | None) -> dict[str, Any] | None:
    """The outcome: a grade and referral decision, or ungradable with reasons; None until then."""
    if result is None:
        return None
    report = QualityReport(result.gradable, tuple(result.ungradable_reasons), result.quality or {})
    return {
        "gradable": result.gradable,
        "ungradable_reasons": list(result.ungradable_reasons),
        "message": report.message or None,
        "grade": result.grade,
        "grade_name": result.grade_name,
        "expected_grade": result.expected_grade,
        "referable": result.referable,
        "referable_probability": result.referable_probability,
        "referable_threshold": result.referable_threshold,
        "confidence": result.confidence,
        "probabilities": list(result.probabilities) if result.probabilities is not None else None,
        "quality": result.quality,
        "model": model_of(result),
        "preprocessing_version": result.preprocessing_version,
        "inference_ms": result.inference_ms,
        "graded_at": iso(result.created_at),
        "heatmap": (
            url_for("v1.images.get_heatmap", image_id=result.image_id, _external=True)
            if result.heatmap_sha256
            else None
        ),
    }


def image_detail(image: Image, result: Result | None) -> dict[str, Any]:
    """One image with its result and links."""
    return {
        **image_record(image),
        "result": grading(result),
        "links": {
            "self": url_for("v1.images.get_image", image_id=image.id, _external=True),
            "batch": url_for("v1.batches.get_batch", batch_id=image.batch_id, _external=True),
        },
    }


def result_row(image: Image, result: Result | None) -> dict[str, Any]:
    """A compact per-image row for the results listing."""
    outcome = grading(result) or {}
    return {
        "image_id": str(image.id),
        "filename": image.filename,
        "patient_id": image.patient_id,
        "laterality": image.laterality,
        "state": image.state.value,
        "gradable": outcome.get("gradable"),
        "ungradable_reasons": outcome.get("ungradable_reasons"),
        "grade": outcome.get("grade"),
        "grade_name": outcome.get("grade_name"),
        "expected_grade": outcome.get("expected_grade"),
        "referable": outcome.get("referable"),
        "referable_threshold": outcome.get("referable_threshold"),
        "confidence": outcome.get("confidence"),
        "probabilities": outcome.get("probabilities"),
        "model": outcome.get("model"),
        "preprocessing_version": outcome.get("preprocessing_version"),
        "error": (
            {"code": image.error_code, "message": image.error_message} if image.error_code else None
        ),
        "links": {
            "image": url_for("v1.images.get_image", image_id=image.id, _external=True),
            "heatmap": outcome.get("heatmap"),
        },
    }


def patient_row(outcome: PatientOutcome) -> dict[str, Any]:
    """One patient's roll-up, with links to the images behind it."""
    return {
        "patient_id": outcome.patient_id,
        "outcome": outcome.outcome,
        "grade": outcome.grade,
        "eyes": {
            side: {
                "grade": eye.grade,
                "referable": eye.referable,
                "gradable_images": eye.gradable_images,
                "images": [
                    url_for("v1.images.get_image", image_id=image_id, _external=True)
                    for image_id in eye.images
                ],
            }
            for side, eye in sorted(outcome.eyes.items())
        },
        "scheme": {
            "name": outcome.scheme.name,
            "code": outcome.code,
            "eyes": {side: eye.code for side, eye in sorted(outcome.eyes.items())},
            # the model never sees the macula: no M0 is claimed
            "maculopathy": MACULOPATHY_NOT_ASSESSED,
            "recall_months": outcome.recall_months,
        },
    }
