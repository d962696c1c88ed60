"""``/v1/models``: the models this deployment can grade with, and the one it serves now."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, url_for

from api.docs.schemas import ModelEntry, ModelList
from api.docs.spec import operation
from api.errors import not_found
from api.state import api_state, db_session
from common.modelling.activation import Activation, active_model, serving_model_name
from common.modelling.manifest import ManifestError
from common.modelling.registry import RegisteredModel, available_models, find_model

bp = Blueprint("models", __name__)


def _model_body(model: RegisteredModel, serving: str) -> dict[str, Any]:
    return {
        "name": model.name,
        "serving": model.name == serving,
        "manifest": model.manifest.to_dict(),
        "links": {"self": url_for("v1.models.get_model", name=model.name, _external=True)},
    }


def _activation_body(activation: Activation | None) -> dict[str, Any] | None:
    if activation is None:
        return None
    return {
        "name": activation.name,
        "version": activation.version,
        "sha256": activation.sha256,
        "activated_at": activation.activated_at.isoformat(),
    }


@bp.get("/models")
@operation(tag="models", responses={200: ModelList})
def list_models() -> Response:
    """Every model in the registry with its manifest; ``serving`` marks the workers' model.

    ``active`` is the model an administrator activated (``retinaq admin models activate``),
    which workers switch to between tasks; null when none was, and workers serve the
    settings' model. A model file pinned by ``RETINAQ_MODEL_PATH`` outranks it.
    """
    settings = api_state().settings
    activation = active_model(db_session())
    serving = serving_model_name(settings, activation)
    models = available_models(settings.models_dir)
    return jsonify(
        {
            "serving": serving,
            "active": _activation_body(activation),
            "items": [_model_body(m, serving) for m in models],
        }
    )


@bp.get("/models/<name>")
@operation(tag="models", responses={200: ModelEntry}, errors=(404,))
def get_model(name: str) -> Response:
    """One model's manifest: metrics, preprocessing, thresholds and file hash."""
    settings = api_state().settings
    try:
        model = find_model(settings.models_dir, name)
    except ManifestError as error:
        raise not_found("model") from error
    return jsonify(_model_body(model, serving_model_name(settings, active_model(db_session()))))
