"""JSON request bodies: small, refused unread when too large, parsed without crashing.

The API takes large bodies only as ``multipart/form-data`` uploads, which are streamed to
disk. Every other body (in practice JSON) is read into memory whole, by the view and by the
idempotency fingerprint, so it gets a limit of its own, ``Settings.max_json_bytes``:

* a declared ``Content-Length`` above it is refused with 413 ``json_too_large`` before a
  byte of the body is read;
* a body without one (chunked) is read at most ``max_json_bytes + 1`` bytes, then refused
  the same way if it did not end there.
"""

from __future__ import annotations

import json
from typing import Any

from flask import request

from api.errors import ApiError, echo_client_values
from api.state import api_state

STREAMED_MEDIA_TYPE = "multipart/form-data"


def limit_json_body() -> None:
    """``before_request``: bound every body but a streamed upload, before anyone reads it."""
    if request.mimetype == STREAMED_MEDIA_TYPE:
        return
    limit = api_state().settings.max_json_bytes
    declared = request.content_length
    if declared is not None:
        if declared > limit:
            raise _too_large(limit)
        return
    # No Content-Length: werkzeug's maximum would silently truncate at the limit, so
    # allow one byte more and read now; a body that reaches it did not end in time.
    request.max_content_length = limit + 1
    if len(request.get_data(cache=True)) > limit:
        raise _too_large(limit)


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "json_too_large",
        f"a request body other than a multipart upload may be at most {limit} bytes",
    )


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys repeat means two different things; never pick one silently."""
    body: dict[str, Any] = {}
    for key, value in pairs:
        if key in body:
            raise _DuplicateKey(key)
        body[key] = value
    return body


def json_object() -> dict[str, Any]:
    """The request's body as a JSON object; 400 ``invalid_json`` for anything else."""
    try:
        body = json.loads(request.get_data(cache=True), object_pairs_hook=_refuse_duplicates)
    except _DuplicateKey as duplicate:
        raise ApiError(
            422,
            "duplicate_field",
            f"field {echo_client_values([duplicate.key])} appears more than once",
        ) from None
    except RecursionError:
        # The C decoder gives up cleanly past Python's recursion limit; nobody nests that deep.
        raise ApiError(400, "invalid_json", "the JSON body is nested too deeply") from None
    except ValueError:
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    return body
