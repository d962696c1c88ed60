"""``/v1/images/<id>``: one image's state, result or error, provenance, and heat map."""

from __future__ import annotations

import io
import uuid

from flask import Blueprint, Response, jsonify, send_file

from api.audit import audit_read
from api.docs.schemas import ImageDetail
from api.docs.spec import Body, operation
from api.errors import ApiError, not_found
from api.hooks.auth import scope
from api.representations.json import image_detail
from api.state import api_state
from common.db.tables import Image, Result

bp = Blueprint("images", __name__)


@bp.get("/images/<uuid:image_id>")
@operation(tag="images", responses={200: ImageDetail}, errors=(404,))
def get_image(image_id: uuid.UUID) -> Response:
    """The image and its result; 404 alike for missing and foreign ids."""
    row = scope().image_with_result(image_id)
    if row is None:
        raise not_found("image")
    image, result = row
    response = jsonify(image_detail(image, result))
    audit_read("results.read", "image", image.id, {"batch_id": str(image.batch_id), "items": 1})
    return response


@bp.get("/images/<uuid:image_id>/heatmap")
@operation(
    tag="images",
    responses={200: Body("image/png", {"type": "string", "contentMediaType": "image/png"})},
    errors=(404,),
)
def get_heatmap(image_id: uuid.UUID) -> Response:
    """The Grad-CAM overlay (PNG) of the image's result; 404 JSON saying why when none."""
    row = scope().image_with_result(image_id)
    if row is None:
        raise not_found("image")
    image, result = row
    if result is None or result.heatmap_sha256 is None:
        raise ApiError(404, "no_heatmap", _why_no_heatmap(image, result))
    store = api_state().store
    try:
        png = store.read(store.relative_path(result.heatmap_sha256))
    except FileNotFoundError:  # purged a moment ago with its batch
        raise ApiError(404, "no_heatmap", "the heat map is no longer stored") from None
    audit_read("heatmap.read", "image", image.id, {"batch_id": str(image.batch_id), "items": 1})
    response = send_file(
        io.BytesIO(png), mimetype="image/png", etag=result.heatmap_sha256, conditional=True
    )
    response.headers["Cache-Control"] = "private, max-age=86400, immutable"
    return response


def _why_no_heatmap(image: Image, result: Result | None) -> str:
    if result is None:
        return f"the image is {image.state.value}, not graded"
    if not result.gradable:
        return "the image is ungradable, so the model never looked at it"
    return (
        "no heat map has been made for this image: they are made for referable and borderline "
        "results, and for every image of a batch created with explain=true, by the workers "
        "that serve heat maps, after grading"
    )
