"""Prometheus metrics of the API: requests by route and status, errors by code, images and
bytes ingested, and the queue as PostgreSQL sees it (:mod:`api.queue_metrics`).

Under gunicorn every process counts into files of its own in the folder named by
``PROMETHEUS_MULTIPROC_DIR``, which ``retinaq api`` empties and sets before gunicorn
starts (and ``api.serving.gunicorn_conf`` tidies after a process exits), and ``GET
/metrics`` adds them all up, whichever process answers. Without that variable (tests, a
single process) each app counts into a registry of its own.

Labels are bounded by construction: the route is the URL rule (``/v1/batches/<uuid:batch_id>``),
never the path a client sent; the method is one of the standard ones or ``other``; an error
code is one the API itself wrote. ``/metrics`` is answered by a WSGI layer outside Flask, so
Prometheus may scrape it by the container's name whatever ``RETINAQ_PUBLIC_URL`` says, and a
request that came through the proxy (it carries ``X-Forwarded-For``) is answered 404: the
queue's figures name programmes and are for the operator, not the public.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response, request
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import Engine

from api.hooks.idempotency import REPLAYED_HEADER
from api.queue_metrics import QueueCollector
from common.settings import Settings

METRICS_PATH = "/metrics"
MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
_STARTED_KEY = "retinaq.metrics.started"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# The upload routes: what they accept is what the API ingests.
UPLOAD_ENDPOINTS = frozenset({"v1.batches.create_batch", "v1.batches.add_images"})
# Status polls take milliseconds; an upload of hundreds of megabytes takes minutes.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass(frozen=True)
class ApiMetrics:
    """The API's instruments, and the registry ``/metrics`` reads."""

    serving: CollectorRegistry
    requests: Histogram
    errors: Counter
    ingested_images: Counter
    ingested_bytes: Counter


def multiprocess_dir() -> str | None:
    """The folder gunicorn's processes share, when ``retinaq api`` set one (prometheus_client's
    own variable, read here and by the library alone)."""
    return os.environ.get(MULTIPROC_DIR_VARIABLE) or None


def make_api_metrics(engine: Engine) -> ApiMetrics:
    """Instruments counting into the multiprocess folder, or into an app's own registry."""
    shared = multiprocess_dir()
    own = None if shared else CollectorRegistry()
    serving = CollectorRegistry()
    if shared:
        MultiProcessCollector(serving, path=shared)  # type: ignore[no-untyped-call]  # untyped upstream
    requests = Histogram(
        "retinaq_api_request_duration_seconds",
        "Time from the request reaching the application to its response, by URL rule.",
        ["route", "method", "status"],
        buckets=LATENCY_BUCKETS,
        registry=own,
    )
    errors = Counter(
        "retinaq_api_errors",
        "Responses with a 4xx or 5xx status, by the error code in their body.",
        ["status", "code"],
        registry=own,
    )
    images = Counter(
        "retinaq_api_ingested_images", "Images accepted by the upload routes.", registry=own
    )
    size = Counter(
        "retinaq_api_ingested_bytes", "Bytes of images accepted by the upload routes.", registry=own
    )
    if own is not None:
        for metric in (requests, errors, images, size):
            serving.register(metric)
    serving.register(QueueCollector(engine))
    return ApiMetrics(serving, requests, errors, images, size)


def install_metrics(app: Flask, settings: Settings, engine: Engine) -> None:
    """Count every request and serve ``/metrics``; with ``RETINAQ_API_METRICS=false``, neither."""
    if not settings.api_metrics:
        return
    metrics = make_api_metrics(engine)
    app.extensions["retinaq.metrics"] = metrics
    app.after_request(_observer(metrics))
    # Outermost: before the public-origin check and the proxy fix (see the module docstring).
    app.wsgi_app = MetricsEndpoint(app.wsgi_app, metrics.serving)  # type: ignore[method-assign]


class MetricsEndpoint:
    """WSGI middleware: answers ``GET /metrics``, and starts each other request's clock."""

    def __init__(self, app: WSGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.registry = registry

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        """Serve the exposition, or pass the request on with its start time."""
        if environ.get("PATH_INFO") != METRICS_PATH:
            environ[_STARTED_KEY] = time.perf_counter()
            return self.app(environ, start_response)
        if environ.get("HTTP_X_FORWARDED_FOR"):
            return _json_error(start_response, "404 NOT FOUND", "not_found", "no such resource")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _json_error(
                start_response, "405 METHOD NOT ALLOWED", "method_not_allowed", "use GET"
            )
        encoder, content_type = choose_encoder(environ.get("HTTP_ACCEPT", ""))
        body = encoder(self.registry)
        start_response(
            "200 OK",
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [] if environ["REQUEST_METHOD"] == "HEAD" else [body]


def _json_error(
    start_response: Callable[..., Any], status: str, code: str, message: str
) -> list[bytes]:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    start_response(
        status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


def _observer(metrics: ApiMetrics) -> Callable[[Response], Response]:
    """An ``after_request`` hook recording the request into ``metrics``."""

    def observe(response: Response) -> Response:
        rule = request.url_rule
        route = rule.rule if rule is not None else "unmatched"
        method = request.method if request.method in _METHODS else "other"
        status = str(response.status_code)
        started = request.environ.get(_STARTED_KEY)
        if started is not None:
            metrics.requests.labels(route, method, status).observe(time.perf_counter() - started)
        if response.status_code >= 400:
            metrics.errors.labels(status, _error_code(response)).inc()
        elif request.endpoint in UPLOAD_ENDPOINTS and REPLAYED_HEADER not in response.headers:
            _count_ingest(metrics)
        return response

    return observe


def _error_code(response: Response) -> str:
    """The ``error.code`` of the API's one error shape; ``unknown`` for any other body."""
    if not response.is_json or response.is_streamed:
        return "unknown"
    body = response.get_json(silent=True)
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else "unknown"


def _count_ingest(metrics: ApiMetrics) -> None:
    """The images a successful upload accepted, and their bytes (as spooled while hashed).

    Only a form the view already parsed is read: reading one here would pull in a body
    no view wanted (an open batch's JSON, say)."""
    files = request.__dict__.get("files")
    if files is None:
        return
    parts = files.getlist("images")
    metrics.ingested_images.inc(len(parts))
    metrics.ingested_bytes.inc(sum(int(getattr(part.stream, "size", 0)) for part in parts))
