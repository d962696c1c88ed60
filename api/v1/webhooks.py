"""``/v1/batches/<id>/webhooks``: a batch's webhook events and every delivery attempt.

The log a programme reads to see what its receiver was sent and answered; another
programme's batch is 404, like every batch route.
"""

from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint, Response, jsonify, url_for

from api.docs.schemas import WebhookDeliveryList
from api.docs.spec import operation
from api.errors import not_found
from api.hooks.auth import scope
from api.representations.json import iso, self_url
from api.state import db_session
from common.db.tables import WebhookAttempt
from common.webhooks.deliveries import LoggedDelivery, delivery_log

bp = Blueprint("webhooks", __name__)


@bp.get("/batches/<uuid:batch_id>/webhooks")
@operation(tag="webhooks", responses={200: WebhookDeliveryList}, errors=(404,))
def batch_webhooks(batch_id: uuid.UUID) -> Response:
    """The batch's events, oldest first, each with its attempts."""
    batch = scope().batch(batch_id)
    if batch is None:
        raise not_found("batch")
    log = delivery_log(db_session(), scope().programme_id, batch.id)
    return jsonify(
        {
            "items": [_delivery(entry) for entry in log],
            "links": {
                "self": self_url(),
                "batch": url_for("v1.batches.get_batch", batch_id=batch.id, _external=True),
            },
        }
    )


def _delivery(entry: LoggedDelivery) -> dict[str, Any]:
    delivery = entry.delivery
    return {
        "id": delivery.id,
        "event_type": delivery.event_type,
        "image_id": None if delivery.image_id is None else str(delivery.image_id),
        "url": delivery.url,
        "state": delivery.state.value,
        "attempt_count": delivery.attempts,
        "created_at": iso(delivery.created_at),
        "next_attempt_at": iso(delivery.next_attempt_at),
        "finished_at": iso(delivery.finished_at),
        "attempts": [_attempt(attempt) for attempt in entry.attempts],
    }


def _attempt(attempt: WebhookAttempt) -> dict[str, Any]:
    return {
        "attempt": attempt.attempt,
        "started_at": iso(attempt.started_at),
        "duration_ms": attempt.duration_ms,
        "status_code": attempt.status_code,
        "error_code": attempt.error_code,
        "error_message": attempt.error_message,
    }
