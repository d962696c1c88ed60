"""``/v1/models``: the models this deployment can grade with, and the one it serves now."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, url_for

from api.errors import not_found
from api.state import api_state
from common.modelling.manifest import ManifestError, read_manifest
from common.modelling.registry import RegisteredModel, available_models, find_model
from common.settings import Settings

bp = Blueprint("models", __name__)


def _model_body(model: RegisteredModel, serving: str) -> dict[str, Any]:
    return {
        "name": model.name,
        "serving": model.name == serving,
        "manifest": model.manifest.to_dict(),
        "links": {"self": url_for("v1.models.get_model", name=model.name, _external=True)},
    }


def _serving(settings: Settings) -> str:
    """The name in the manifest of the file workers load (a model path overrides the name)."""
    try:
        return read_manifest(settings.model_file).name
    except ManifestError:
        return settings.model_name


@bp.get("/models")
def list_models() -> Response:
    """Every model in the registry with its manifest; ``serving`` marks the workers' model."""
    settings = api_state().settings
    serving = _serving(settings)
    models = available_models(settings.models_dir)
    return jsonify({"serving": serving, "items": [_model_body(m, serving) for m in models]})


@bp.get("/models/<name>")
def get_model(name: str) -> Response:
    """One model's manifest: metrics, preprocessing, thresholds and file hash."""
    settings = api_state().settings
    try:
        model = find_model(settings.models_dir, name)
    except ManifestError as error:
        raise not_found("model") from error
    return jsonify(_model_body(model, _serving(settings)))
