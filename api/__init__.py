"""The thin submission API: authenticate, stream images to storage, record, enqueue."""

from __future__ import annotations

import logging

from flask import Flask, request
from flask.json.provider import DefaultJSONProvider

from api import health
from api.cursors import cursor_sealer
from api.docs import pages as docs_pages
from api.errors import register_error_handlers
from api.hooks.hosts import install_origin
from api.hooks.json_bodies import limit_json_body
from api.hooks.request_ids import assign_request_id, echo_request_id
from api.hooks.server_timing import add_server_timing, start_clock
from api.metrics import install_metrics
from api.state import ApiState, api_state, close_db_session
from api.uploads import StreamingRequest
from api.v1 import create_v1
from common.db.engine import engine_from_settings, make_sessionmaker
from common.db.schema import assert_schema_at_head
from common.queue import make_celery
from common.settings import Settings
from common.storage import open_store


def create_app(settings: Settings) -> Flask:
    """Application factory; refuses to start unless the database schema is at head."""
    app = Flask(__name__)
    app.request_class = StreamingRequest
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        MAX_FORM_PARTS=settings.max_files_per_request + 16,
        MAX_FORM_MEMORY_SIZE=settings.max_metadata_bytes,
    )
    json_provider = app.json
    assert isinstance(json_provider, DefaultJSONProvider)  # Flask's default: it has sort_keys
    json_provider.sort_keys = False
    install_origin(app, settings)  # public URL and trusted proxies; checked first

    engine = engine_from_settings(settings)
    try:
        assert_schema_at_head(engine)
        cursors = cursor_sealer(settings)  # fails fast without RETINAQ_SECRET_KEY in production
    except Exception:
        engine.dispose()
        raise
    app.extensions["retinaq"] = ApiState(
        settings=settings,
        engine=engine,
        sessions=make_sessionmaker(engine),
        store=open_store(settings),
        celery=make_celery(settings, name="retinaq-api"),
        cursors=cursors,
    )

    app.register_blueprint(create_v1())
    app.register_blueprint(health.bp)
    app.register_blueprint(docs_pages.bp)  # /v1/openapi.json and /v1/docs, without a key

    app.before_request(start_clock)
    app.before_request(assign_request_id)
    app.before_request(limit_json_body)  # app-level: before /v1's hooks read any body
    app.after_request(echo_request_id)
    app.after_request(add_server_timing)  # after_request runs last-registered first
    register_error_handlers(app)
    app.teardown_appcontext(close_db_session)
    app.teardown_request(_discard_uncommitted_uploads)
    install_metrics(app, settings, engine)  # wraps wsgi_app last: outside the origin check
    logging.getLogger("api").setLevel(settings.log_level)
    return app


def _discard_uncommitted_uploads(_exc: BaseException | None = None) -> None:
    """Spooled uploads that never made it into the store are removed with the request."""
    if isinstance(request, StreamingRequest):
        request.discard_spools(api_state().store)


__all__ = ["create_app"]
