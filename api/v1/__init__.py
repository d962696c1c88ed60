"""Version 1 of the programme API: one module per resource, behind API-key authentication.

Authentication and idempotency are hooks of this blueprint, not of the application, so
pages or another API version can be added beside it with their own.
"""

from __future__ import annotations

from flask import Blueprint

from api.hooks.auth import authenticate
from api.hooks.idempotency import begin_idempotent_request, finish_idempotent_request
from api.v1 import batches, exports, images, models, webhooks


def create_v1() -> Blueprint:
    """The ``/v1`` blueprint with its hooks and resources."""
    v1 = Blueprint("v1", __name__, url_prefix="/v1")
    v1.before_request(authenticate)
    v1.before_request(begin_idempotent_request)
    v1.after_request(finish_idempotent_request)
    v1.register_blueprint(batches.bp)
    v1.register_blueprint(images.bp)
    v1.register_blueprint(models.bp)
    v1.register_blueprint(webhooks.bp)
    exports.register(v1)
    return v1
