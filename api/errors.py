"""JSON errors: every failure answers ``{"error": {"code", "message"}}`` with its status."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from flask import Flask, Response, g, jsonify
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from common.storage.base import StoreUnavailable

log = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "too_many_requests",
    500: "internal_error",
    503: "service_unavailable",
}


class ApiError(Exception):
    """An error the client can act on, with a stable machine-readable code."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def error_response(status: int, code: str, message: str) -> Response:
    """The one JSON error shape."""
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    return response


# Error messages that name what the client sent stay small however much was sent.
ECHO_MAX_VALUES = 10
ECHO_MAX_CHARS = 64


def echo_client_values(values: Sequence[str]) -> str:
    """Client values for an error message: the first few, each quoted and cut short."""
    shown = [_quoted(value) for value in values[:ECHO_MAX_VALUES]]
    more = len(values) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _quoted(value: str) -> str:
    # repr escapes control characters, which can make a short value long again: cut after.
    text = repr(value[:ECHO_MAX_CHARS])
    if len(value) > ECHO_MAX_CHARS or len(text) > ECHO_MAX_CHARS + 2:
        return text[: ECHO_MAX_CHARS + 1] + "…"
    return text


def not_found(kind: str) -> ApiError:
    """The same 404 whether the object does not exist or belongs to another programme."""
    return ApiError(404, "not_found", f"no such {kind}")


def register_error_handlers(app: Flask) -> None:
    """Turn every exception into the JSON error shape."""

    @app.errorhandler(ApiError)
    def _api_error(error: ApiError) -> Response:
        response = error_response(error.status, error.code, error.message)
        response.headers.update(error.headers)
        return response

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        status = error.code or 500
        message = error.description or ""  # werkzeug's own exceptions all have one
        response = error_response(status, _CODES.get(status, "http_error"), message)
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="retinaq"'
        return response

    @app.errorhandler(OperationalError)
    def _database_down(error: OperationalError) -> Response:
        log.warning("database unavailable: %s", error.orig.__class__.__name__)
        response = error_response(503, "database_unavailable", "the database is unreachable")
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(StoreUnavailable)
    def _store_down(error: StoreUnavailable) -> Response:
        log.warning("image store unavailable: %s", error)
        response = error_response(503, "storage_unavailable", "the image store is unreachable")
        response.headers["Retry-After"] = "5"
        return response

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        # The request id (validated before it was stored) lets an operator match the report.
        log.exception("unhandled error in request %s", g.get("request_id"))
        return error_response(500, "internal_error", "an unexpected error occurred")
