"""The OpenAPI 3.1 document, built from the views' own decorators by spectree.

Each ``/v1`` view is decorated with :func:`operation`, which hands its request models to
spectree, so the same pydantic models validate the request and describe it: the document
cannot drift from the code. spectree's own pieces are narrowed to what this API needs:

* JSON bodies are read by :func:`api.hooks.json_bodies.json_object` (bounded, duplicate
  keys refused, deep nesting answered 400) before the model sees them;
* query parameters keep the views' one-value reading (``request.args.get``);
* a validation failure becomes our error shape with the codes and messages clients
  already rely on (:func:`_api_error`), never spectree's list of pydantic errors;
* responses are not validated at run time (the tests validate them against the document).

What spectree does not model (response headers, non-JSON bodies, multipart uploads, the
error responses each route can give) is declared beside the models in :func:`operation`
and written into the document by :func:`openapi_document`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from flask import Flask, Request
from pydantic import BaseModel, ValidationError
from spectree import Response as SpecResponse
from spectree import SecurityScheme, SpecTree
from spectree.models import SecureType, SecuritySchemeData
from spectree.plugins.base import Context
from spectree.plugins.flask_plugin import FlaskPlugin

from api.docs.schemas import MAX_REFERENCE_LENGTH, Error
from api.errors import ApiError, echo_client_values
from api.hooks.json_bodies import json_object
from api.state import api_state

F = TypeVar("F", bound=Callable[..., Any])

TITLE = "RetinaQ screening API"
VERSION = "1"
_SECURITY = "apiKey"
_EXTENSION = "retinaq.openapi"


class _Plugin(FlaskPlugin):
    """spectree's Flask plugin reading requests the way the views always have."""

    def request_validation(
        self, request: Request, query: Any, json: Any, form: Any, headers: Any, cookies: Any
    ) -> None:
        """Validate the query's first values and a JSON body parsed by our strict reader."""
        adapter = self.model_adapter
        query_values = {key: request.args.get(key) for key in request.args}
        body = None
        if json is not None and request.mimetype == "application/json":
            body = adapter.validate_obj(json, json_object())
        request.context = Context(  # type: ignore[attr-defined]
            adapter.validate_obj(query, query_values) if query is not None else None,
            body,
            None,
            None,
            None,
        )

    def validate_response(
        self, resp: Any, resp_model: Any, skip_validation: bool, force_resp_serialize: bool
    ) -> tuple[Any, None]:
        """The view's response as it is: the tests check it against the document."""
        return resp, None


def _api_error(error: ValidationError) -> ApiError:
    """The first problem as the error the views gave before the models took over."""
    problems = error.errors(include_url=False)
    unknown = [str(p["loc"][0]) for p in problems if p["type"] == "extra_forbidden"]
    if unknown:
        return ApiError(
            422, "unknown_fields", f"unknown field(s): {echo_client_values(sorted(unknown))}"
        )
    problem = problems[0]
    name = str(problem["loc"][0]) if problem["loc"] else ""
    if name == "open":
        return ApiError(
            422,
            "open_required",
            'a JSON body creates an open batch and must say "open": true; '
            "send multipart/form-data to submit images at once",
        )
    if name == "reference":
        if problem["type"] == "invalid_reference":
            return ApiError(422, "invalid_reference", problem["msg"])
        return ApiError(
            422,
            "invalid_reference",
            f"reference must be text of at most {MAX_REFERENCE_LENGTH}",
        )
    if name == "explain":
        return ApiError(422, "invalid_explain", "explain must be true or false")
    if name == "limit":
        if problem["type"] == "greater_than_equal":
            maximum = api_state().settings.page_size_max
            return ApiError(400, "invalid_limit", f"limit must be between 1 and {maximum}")
        return ApiError(400, "invalid_limit", "limit must be an integer")
    if name == "cursor":
        return ApiError(400, "invalid_cursor", "the cursor is not valid; start again without one")
    if name == "purge":
        return ApiError(400, "invalid_purge", "purge must be true or false")
    if name == "callback_url":
        return ApiError(422, "invalid_callback_url", "callback_url must be text")
    return ApiError(422, "invalid_request", f"{name or 'the request'}: {problem['msg']}")


def _raise_api_error(
    _request: Any, _response: Any, error: Exception | None, _instance: Any, _adapter: Any
) -> None:
    """spectree's ``before`` hook: a validation failure leaves as our error shape."""
    if isinstance(error, ValidationError):
        raise _api_error(error) from None


api_spec = SpecTree(
    backend=_Plugin,
    before=_raise_api_error,
    validation_error_model=Error,
    title=TITLE,
    version=VERSION,
    description=(
        "Submit fundus photographs in batches, follow their grading, read results per "
        "image and per patient. Every failure answers "
        '`{"error": {"code", "message"}}`; clients act on `code`.'
    ),
    mode="strict",
    annotations=False,
    security_schemes=[
        SecurityScheme(
            name=_SECURITY,
            data=SecuritySchemeData(
                type=SecureType.HTTP, scheme="bearer", description="A programme's API key."
            ),
        )
    ],
    security={_SECURITY: []},
)


@dataclass(frozen=True)
class Body:
    """A response body spectree does not model: its media type and schema (or model)."""

    media_type: str
    schema: dict[str, Any] | type[BaseModel]


NO_CONTENT = Body("", {})


@dataclass(frozen=True)
class Extras:
    """What an operation declares beyond spectree's models."""

    statuses: dict[int, type[BaseModel] | Body]
    errors: tuple[int, ...]
    multipart: type[BaseModel] | None
    headers: dict[int, tuple[str, ...]] = field(default_factory=dict)


# Status → what it means here and the codes a client may see with it.
ERROR_STATUSES: dict[int, str] = {
    400: "Bad request: invalid_limit, invalid_cursor, invalid_purge, invalid_json, "
    "invalid_multipart, invalid_chunked_body, invalid_idempotency_key, invalid_host.",
    401: "No or unknown API key: unauthorized, invalid_api_key.",
    404: "No such object, or one of another programme: not_found, no_heatmap.",
    409: "Conflict: batch_closed, webhooks_not_enabled, idempotency_key_in_progress (with "
    "Retry-After).",
    413: "Too large: payload_too_large, too_many_files, metadata_too_large, json_too_large.",
    415: "Images must be sent as multipart/form-data: unsupported_media_type.",
    422: "Unprocessable: no_images, unknown_fields, duplicate_field, open_required, "
    "invalid_reference, invalid_explain, invalid_callback_url, invalid_request, "
    "invalid_metadata, metadata_unmatched, metadata_ambiguous, request_exceeds_quota, "
    "idempotency_key_reused.",
    429: "Quota or rate limit: quota_exceeded, rate_limited (with Retry-After).",
    503: "A backing service is down: database_unavailable, storage_unavailable (with Retry-After).",
}
ALWAYS = (401, 503)
_RETRY_AFTER_STATUSES = (409, 429, 503)

HEADERS: dict[str, dict[str, Any]] = {
    "Location": {
        "description": "The batch's URL.",
        "schema": {"type": "string", "format": "uri"},
    },
    "Retry-After": {
        "description": "Seconds to wait before asking again.",
        "schema": {"type": "integer", "minimum": 0},
    },
    "X-Request-ID": {
        "description": "The request's id: the caller's when it sent a valid one, else ours.",
        "schema": {"type": "string"},
    },
    "Idempotent-Replayed": {
        "description": "true when this is the stored answer to an earlier request.",
        "schema": {"type": "string", "enum": ["true"]},
    },
}

_extras: dict[str, Extras] = {}


def operation(
    *,
    responses: dict[int, type[BaseModel] | Body],
    errors: Sequence[int] = (),
    query: type[BaseModel] | None = None,
    json: type[BaseModel] | None = None,
    multipart: type[BaseModel] | None = None,
    headers: dict[int, tuple[str, ...]] | None = None,
    tag: str,
) -> Callable[[F], F]:
    """Describe a view and validate its query and JSON body with the same models."""

    def decorate(view: F) -> F:
        models = {f"HTTP_{s}": m for s, m in responses.items() if isinstance(m, type)}
        validated = api_spec.validate(
            query=query,
            json=json,
            resp=SpecResponse(**models),
            tags=[tag],
            operation_id=view.__name__,
            validation_error_status=400 if json is None else 422,
        )(view)
        _extras[view.__name__] = Extras(
            statuses=responses,
            errors=tuple(sorted({*errors, *ALWAYS})),
            multipart=multipart,
            headers=headers or {},
        )
        return cast(F, validated)

    return decorate


def openapi_document(app: Flask) -> dict[str, Any]:
    """The app's document, built on first use and kept."""
    cached = app.extensions.get(_EXTENSION)
    if cached is None:
        with app.app_context():
            # spectree builds its document once per process, from the first app's routes
            # (every app has the same /v1 views); each app completes its own copy.
            cached = _complete(copy.deepcopy(api_spec.spec))
        app.extensions[_EXTENSION] = cached
    return cast(dict[str, Any], cached)


def _error_ref() -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{api_spec.naming_strategy(Error)}"}


def _complete(document: dict[str, Any]) -> dict[str, Any]:
    """Add what spectree leaves out: errors, headers, non-JSON bodies, uploads."""
    schemas = document["components"]["schemas"]
    error = Error.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.setdefault(api_spec.naming_strategy(Error), error)
    _lift_definitions(schemas)
    document["components"]["headers"] = HEADERS
    for path_item in document["paths"].values():
        for method, op in path_item.items():
            extras = _extras[op["operationId"]]
            _complete_operation(method, op, extras, schemas)
    return document


def _lift_definitions(schemas: dict[str, Any]) -> None:
    """Models added here carry their nested models in ``$defs``; components hold them."""
    for schema in list(schemas.values()):
        for name, nested in schema.pop("$defs", {}).items():
            schemas.setdefault(name, nested)


def _header_ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/headers/{name}"}


def _schema(schema: dict[str, Any] | type[BaseModel], schemas: dict[str, Any]) -> dict[str, Any]:
    """A literal schema as it is; a model added to the components and referred to."""
    if isinstance(schema, dict):
        return schema
    name = api_spec.naming_strategy(schema)
    schemas[name] = schema.model_json_schema(ref_template="#/components/schemas/{model}")
    _lift_definitions(schemas)
    return {"$ref": f"#/components/schemas/{name}"}


def _complete_operation(
    method: str, op: dict[str, Any], extras: Extras, schemas: dict[str, Any]
) -> None:
    op["parameters"].append(
        {
            "name": "X-Request-ID",
            "in": "header",
            "required": False,
            "description": "Your id for the request (a letter or digit, then up to 63 of "
            "letters, digits and ._:+=/@-); echoed back and kept with each image.",
            "schema": {"type": "string", "maxLength": 64},
        }
    )
    if method == "post":
        op["parameters"].append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "Retry safely: the same key and body within a day get the "
                "first answer again (1-255 printable ASCII characters, no comma).",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            }
        )
    responses = op["responses"]
    # spectree adds a 422 for every validated operation; keep only the declared errors.
    for status in [s for s in responses if s.isdigit() and int(s) >= 400]:
        if int(status) not in extras.errors:
            del responses[status]
    for status, body in extras.statuses.items():
        if isinstance(body, Body):
            entry: dict[str, Any] = {"description": body.media_type or "No content."}
            if body.media_type:
                entry["content"] = {body.media_type: {"schema": _schema(body.schema, schemas)}}
            responses[str(status)] = entry
    for status in extras.errors:
        responses[str(status)] = {
            "description": ERROR_STATUSES[status],
            "content": {"application/json": {"schema": _error_ref()}},
        }
    for status_text, response in responses.items():
        names = ["X-Request-ID", *extras.headers.get(int(status_text), ())]
        if int(status_text) in _RETRY_AFTER_STATUSES:
            names.append("Retry-After")
        if method == "post" and int(status_text) < 300:
            names.append("Idempotent-Replayed")
        response["headers"] = {name: _header_ref(name) for name in names}
    if extras.multipart:
        content = op.setdefault("requestBody", {"required": True}).setdefault("content", {})
        content["multipart/form-data"] = {
            "schema": _schema(extras.multipart, schemas),
            "encoding": {"images": {"contentType": "image/jpeg, image/png, application/dicom"}},
        }
