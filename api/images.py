"""``/v1/images/<id>``: one image's state, result or error, and provenance."""

from __future__ import annotations

import uuid

from flask import Blueprint, Response, jsonify

from api.audit import audit_read
from api.auth import scope
from api.errors import not_found
from api.responses import image_detail

bp = Blueprint("images", __name__)


@bp.get("/images/<uuid:image_id>")
def get_image(image_id: uuid.UUID) -> Response:
    """The image and its result; 404 alike for missing and foreign ids."""
    row = scope().image_with_result(image_id)
    if row is None:
        raise not_found("image")
    image, result = row
    response = jsonify(image_detail(image, result))
    audit_read("results.read", "image", image.id, {"batch_id": str(image.batch_id), "items": 1})
    return response
