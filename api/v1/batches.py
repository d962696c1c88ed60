"""``/v1/batches``: submit images, follow a batch, read its results, cancel or purge it."""

from __future__ import annotations

import unicodedata
import uuid
from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for

from api.audit import audit, audit_read
from api.docs.schemas import (
    BatchAdded,
    BatchBrief,
    BatchList,
    BatchStatus,
    BatchUpload,
    DeleteQuery,
    ImageList,
    ImagesUpload,
    OpenBatchRequest,
    PageQuery,
    PatientList,
    ResultList,
)
from api.docs.spec import NO_CONTENT, operation
from api.errors import ApiError, echo_client_values, not_found
from api.flags import parse_flag
from api.hooks.auth import scope
from api.pagination import (
    decode_cursor,
    decode_text_cursor,
    encode_cursor,
    encode_text_cursor,
    parse_limit,
)
from api.representations.json import (
    batch_brief,
    batch_status,
    image_record,
    patient_row,
    result_row,
    self_url,
)
from api.state import api_state, db_session
from api.submission import enqueue_grading, record_images
from api.uploads import uploaded_images, uploaded_metadata
from common.db.tables import FINISHED_BATCH_STATES, Batch, BatchState, utcnow
from common.lifecycle.progress import settle_batch
from common.lifecycle.retention import cancel_batch, purge_batch
from common.screening.patients import roll_up
from common.screening.programmes import eye_images, previous_codes, programme_scheme
from common.webhooks.addresses import CallbackRefused, check_callback_url, parse_networks
from common.webhooks.programmes import can_sign

bp = Blueprint("batches", __name__)

MAX_REFERENCE_LENGTH = 200
# Each listing seals its cursors under its endpoint's name, so no other listing accepts them.
_BATCHES = "v1.batches.list_batches"
_PATIENTS = "v1.batches.list_patients"


def _reference(raw: Any) -> str | None:
    """The client's label for a batch: short text that a database and a log can hold."""
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str) or len(raw) > MAX_REFERENCE_LENGTH:
        raise ApiError(
            422, "invalid_reference", f"reference must be text of at most {MAX_REFERENCE_LENGTH}"
        )
    # Cc: NUL (which PostgreSQL cannot store) and other control characters; Cs: lone
    # surrogates from a JSON "\ud800", which are not encodable as UTF-8 at all.
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in raw):
        raise ApiError(422, "invalid_reference", "reference must not contain control characters")
    return raw


def _form_field(name: str) -> str | None:
    """A form field that may be sent once; repeated, it would mean two different things."""
    values = request.form.getlist(name)
    if len(values) > 1:
        raise ApiError(
            422, "duplicate_field", f"field {echo_client_values([name])} appears more than once"
        )
    return values[0] if values else None


def _explain(raw: Any) -> bool:
    """The ``explain`` flag, from a form field ("true"/"false") or a JSON boolean."""
    if raw is None or isinstance(raw, bool):
        return bool(raw)
    try:
        if isinstance(raw, str):
            return parse_flag(raw)
    except ValueError:
        pass
    raise ApiError(422, "invalid_explain", "explain must be true or false")


def _callback_url(raw: Any) -> str | None:
    """Where the batch's webhook events go: a URL the SSRF checks accept, for a programme
    that has a signing secret (``retinaq admin set-webhook``)."""
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise ApiError(422, "invalid_callback_url", "callback_url must be text")
    settings = api_state().settings
    try:
        check_callback_url(
            raw,
            allow_http=settings.webhook_allow_http,
            allowed=parse_networks(settings.webhook_allowed_networks),
        )
    except CallbackRefused as error:
        raise ApiError(422, "invalid_callback_url", str(error)) from error
    if not can_sign(db_session(), scope().programme_id):
        raise ApiError(
            409,
            "webhooks_not_enabled",
            "this programme has no webhook signing secret; ask the operator to run "
            "retinaq admin set-webhook",
        )
    return raw


def _owned_batch(batch_id: uuid.UUID, *, for_update: bool = False) -> Batch:
    batch = scope().batch(batch_id, for_update=for_update)
    if batch is None:
        raise not_found("batch")
    return batch


def _created(body: dict[str, Any], status: int, batch: Batch) -> Response:
    response = jsonify(body)
    response.status_code = status
    response.headers["Location"] = url_for(
        "v1.batches.get_batch", batch_id=batch.id, _external=True
    )
    return response


@bp.post("/batches")
@operation(
    tag="batches",
    json=OpenBatchRequest,
    multipart=BatchUpload,
    responses={201: BatchBrief, 202: BatchBrief},
    errors=(400, 409, 413, 415, 422, 429),
    headers={201: ("Location",), 202: ("Location",)},
)
def create_batch() -> Response:
    """Multipart: a closed batch graded at once (202). JSON ``{"open": true}``: an open batch."""
    if request.mimetype == "application/json":
        return _create_open_batch()
    state = api_state()
    files = uploaded_images(request, state.settings.max_files_per_request, creating=True)
    metadata = uploaded_metadata(request, state.settings.max_metadata_bytes)
    session = db_session()
    now = utcnow()
    batch = Batch(
        programme_id=scope().programme_id,
        reference=_reference(_form_field("reference")),
        explain=_explain(_form_field("explain")),
        callback_url=_callback_url(_form_field("callback_url")),
        state=BatchState.QUEUED,
        image_count=0,
        created_at=now,
        closed_at=now,
    )
    session.add(batch)
    session.flush()
    image_ids = record_images(session, state, batch, files, metadata)
    audit("batch.create", "batch", batch.id, {"open": False, "image_count": len(image_ids)})
    session.commit()
    session.refresh(batch)
    enqueue_grading(state, image_ids)
    return _created(batch_brief(batch), 202, batch)


def _create_open_batch() -> Response:
    # Validated by OpenBatchRequest (api.docs.spec): unknown fields and "open" are settled.
    body: OpenBatchRequest = request.context.json  # type: ignore[attr-defined]
    batch = Batch(
        programme_id=scope().programme_id,
        reference=_reference(body.reference),
        explain=_explain(body.explain),
        callback_url=_callback_url(getattr(body, "callback_url", None)),
        state=BatchState.OPEN,
        image_count=0,
    )
    session = db_session()
    session.add(batch)
    session.flush()
    audit("batch.create", "batch", batch.id, {"open": True, "image_count": 0})
    session.commit()
    return _created(batch_brief(batch), 201, batch)


@bp.post("/batches/<uuid:batch_id>/images")
@operation(
    tag="batches",
    multipart=ImagesUpload,
    responses={202: BatchAdded},
    errors=(400, 404, 409, 413, 415, 422, 429),
    headers={202: ("Location",)},
)
def add_images(batch_id: uuid.UUID) -> Response:
    """Add images to an open batch; they are enqueued at once (202)."""
    state = api_state()
    files = uploaded_images(request, state.settings.max_files_per_request)
    metadata = uploaded_metadata(request, state.settings.max_metadata_bytes)
    session = db_session()
    batch = _owned_batch(batch_id, for_update=True)
    if batch.state != BatchState.OPEN:
        raise ApiError(409, "batch_closed", "the batch is closed; create a new batch")
    image_ids = record_images(session, state, batch, files, metadata)
    audit("batch.add_images", "batch", batch.id, {"added": len(image_ids)})
    session.commit()
    session.refresh(batch)
    enqueue_grading(state, image_ids)
    body = {**batch_brief(batch), "added": len(image_ids)}
    response = jsonify(body)
    response.status_code = 202
    response.headers["Location"] = body["links"]["self"]
    return response


@bp.post("/batches/<uuid:batch_id>/close")
@operation(tag="batches", responses={200: BatchBrief}, errors=(400, 404, 409, 422))
def close_batch(batch_id: uuid.UUID) -> Response:
    """No more images will come; closing twice is harmless."""
    session = db_session()
    batch = _owned_batch(batch_id, for_update=True)
    was_open = batch.state == BatchState.OPEN
    if was_open:
        batch.closed_at = utcnow()
        batch.state = BatchState.QUEUED
        session.flush()
        settle_batch(session, batch.id)
        session.refresh(batch)
    audit(
        "batch.close",
        "batch",
        batch.id,
        {"closed_now": was_open, "state": batch.state.value, "image_count": batch.image_count},
    )
    session.commit()
    return jsonify(batch_brief(batch))


@bp.get("/batches/<uuid:batch_id>")
@operation(
    tag="batches", responses={200: BatchStatus}, errors=(404,), headers={200: ("Retry-After",)}
)
def get_batch(batch_id: uuid.UUID) -> Response:
    """Status with counts; ``Retry-After`` tells pollers when to come back."""
    found = scope().batch_with_summary(batch_id)
    if found is None:
        raise not_found("batch")
    batch, summary = found
    response = jsonify(batch_status(batch, summary))
    if batch.state not in FINISHED_BATCH_STATES:
        response.headers["Retry-After"] = str(api_state().settings.status_retry_after_s)
    return response


@bp.get("/batches")
@operation(tag="batches", query=PageQuery, responses={200: BatchList}, errors=(400,))
def list_batches() -> Response:
    """This programme's batches, oldest first, keyset-paginated."""
    settings = api_state().settings
    limit = parse_limit(
        request.args.get("limit"), settings.page_size_default, settings.page_size_max
    )
    programme_id = scope().programme_id
    after = decode_cursor(request.args.get("cursor"), _BATCHES, programme_id)
    rows = scope().batches_page(after, limit)
    page, more = rows[:limit], len(rows) > limit
    links = {"self": self_url()}
    if more:
        links["next"] = url_for(
            "v1.batches.list_batches",
            limit=limit,
            cursor=encode_cursor(page[-1].id, _BATCHES, programme_id),
            _external=True,
        )
    return jsonify({"items": [batch_brief(b) for b in page], "links": links})


def _image_listing(batch_id: uuid.UUID, endpoint: str, render: Any, audit_action: str) -> Response:
    settings = api_state().settings
    limit = parse_limit(
        request.args.get("limit"), settings.page_size_default, settings.page_size_max
    )
    after = decode_cursor(request.args.get("cursor"), endpoint, batch_id)
    batch = _owned_batch(batch_id)
    rows = scope().images_page(batch, after, limit)
    page, more = rows[:limit], len(rows) > limit
    links = {
        "self": self_url(),
        "batch": url_for("v1.batches.get_batch", batch_id=batch.id, _external=True),
    }
    if more:
        links["next"] = url_for(
            endpoint,
            batch_id=batch.id,
            limit=limit,
            cursor=encode_cursor(page[-1][0].id, endpoint, batch.id),
            _external=True,
        )
    response = jsonify(
        {"batch_id": str(batch.id), "items": [render(i, r) for i, r in page], "links": links}
    )
    audit_read(audit_action, "batch", batch.id, {"items": len(page)})
    return response


@bp.get("/batches/<uuid:batch_id>/results")
@operation(tag="results", query=PageQuery, responses={200: ResultList}, errors=(400, 404))
def list_results(batch_id: uuid.UUID) -> Response:
    """One row per image in submission order: grade and referral, or state and error."""
    return _image_listing(batch_id, "v1.batches.list_results", result_row, "results.read")


@bp.get("/batches/<uuid:batch_id>/images")
@operation(tag="batches", query=PageQuery, responses={200: ImageList}, errors=(400, 404))
def list_images(batch_id: uuid.UUID) -> Response:
    """The batch's images as submitted: names, hashes, metadata, states."""
    return _image_listing(
        batch_id, "v1.batches.list_images", lambda i, _r: image_record(i), "images.read"
    )


@bp.get("/batches/<uuid:batch_id>/patients")
@operation(tag="results", query=PageQuery, responses={200: PatientList}, errors=(400, 404))
def list_patients(batch_id: uuid.UUID) -> Response:
    """One row per patient (from the metadata's ``patient_id``/``laterality``): grade per
    eye, the patient's grade, and ``refer`` / ``rescreen_<N>m`` / ``recapture`` / ``pending``,
    with the programme's scheme's codes and recall interval."""
    settings = api_state().settings
    limit = parse_limit(
        request.args.get("limit"), settings.page_size_default, settings.page_size_max
    )
    after = decode_text_cursor(request.args.get("cursor"), _PATIENTS, batch_id)
    batch = _owned_batch(batch_id)
    patient_ids, rows = scope().patients_page(batch, after, limit)
    session = db_session()
    scheme = programme_scheme(session, batch.programme_id)
    by_patient = eye_images(rows)
    previous = previous_codes(session, batch.programme_id, batch.id, list(by_patient), scheme)
    links = {
        "self": self_url(),
        "batch": url_for("v1.batches.get_batch", batch_id=batch.id, _external=True),
    }
    if len(patient_ids) > limit:
        links["next"] = url_for(
            "v1.batches.list_patients",
            batch_id=batch.id,
            limit=limit,
            cursor=encode_text_cursor(patient_ids[limit - 1], _PATIENTS, batch.id),
            _external=True,
        )
    items = [
        patient_row(roll_up(p, images, scheme, previous.get(p))) for p, images in by_patient.items()
    ]
    audit_read("results.read", "batch", batch.id, {"patients": len(items)})
    return jsonify({"batch_id": str(batch.id), "items": items, "links": links})


def _purge_requested() -> bool:
    try:
        return parse_flag(request.args.get("purge", ""))
    except ValueError as exc:
        raise ApiError(400, "invalid_purge", "purge must be true or false") from exc


@bp.delete("/batches/<uuid:batch_id>")
@operation(
    tag="batches",
    query=DeleteQuery,
    responses={200: BatchBrief, 204: NO_CONTENT},
    errors=(400, 404),
)
def delete_batch(batch_id: uuid.UUID) -> Response:
    """Cancel pending images (200 with the batch); ``?purge=true`` also erases rows and bytes (204).

    Graded images keep their results unless purged. Image bytes are removed only when no
    other image, in any batch or programme, was submitted with the same content.
    """
    purge = _purge_requested()
    session = db_session()
    batch = scope().batch(batch_id, for_update=True)
    if batch is None:
        raise not_found("batch")
    state_before = batch.state.value
    if purge:
        # Added first so that it commits with the deletion, inside purge_batch.
        audit(
            "batch.delete",
            "batch",
            batch.id,
            {"purge": True, "state": state_before, "image_count": batch.image_count},
        )
        purge_batch(session, api_state().store, batch.id)
        return Response(status=204)
    outcome = cancel_batch(session, batch.id)
    audit(
        "batch.delete",
        "batch",
        batch.id,
        {"purge": False, "state": state_before, "images_cancelled": outcome.images_cancelled},
    )
    session.commit()
    session.refresh(batch)
    return jsonify(batch_brief(batch))
