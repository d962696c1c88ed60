"""``/v1/models``: the models this deployment can grade with, and the one it serves now."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, url_for

from api.errors import not_found
from api.state import api_state
from common.manifest import ManifestError
from common.registry import RegisteredModel, available_models, find_model

bp = Blueprint("models", __name__)


def _model_body(model: RegisteredModel, serving: str) -> dict[str, Any]:
    return {
        "name": model.name,
        "serving": model.name == serving,
        "manifest": model.manifest.to_dict(),
        "links": {"self": url_for("v1.models.get_model", name=model.name, _external=True)},
    }


@bp.get("/models")
def list_models() -> Response:
    """Every model in the registry with its manifest; ``serving`` marks the workers' model."""
    settings = api_state().settings
    models = available_models(settings.models_dir)
    return jsonify(
        {
            "serving": settings.model_name,
            "items": [_model_body(model, settings.model_name) for model in models],
        }
    )


@bp.get("/models/<name>")
def get_model(name: str) -> Response:
    """One model's manifest: metrics, preprocessing, thresholds and file hash."""
    settings = api_state().settings
    try:
        model = find_model(settings.models_dir, name)
    except ManifestError as error:
        raise not_found("model") from error
    return jsonify(_model_body(model, settings.model_name))
