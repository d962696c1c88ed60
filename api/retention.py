"""``DELETE /v1/batches/<id>``: cancel what is not yet graded and, when asked, purge it all."""

from __future__ import annotations

import uuid

from flask import Blueprint, Response, jsonify, request

from api.audit import audit
from api.auth import scope
from api.errors import ApiError, not_found
from api.flags import parse_flag
from api.responses import batch_brief
from api.state import api_state, db_session
from common.lifecycle.retention import cancel_batch, purge_batch

bp = Blueprint("retention", __name__)


def _purge_requested() -> bool:
    try:
        return parse_flag(request.args.get("purge", ""))
    except ValueError as exc:
        raise ApiError(400, "invalid_purge", "purge must be true or false") from exc


@bp.delete("/batches/<uuid:batch_id>")
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
