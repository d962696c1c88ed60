"""``X-Request-ID``: one id per request, taken from the caller or made here, echoed back.

The id ties a client's request to our logs and audit events: every line the API logs while
serving a request carries it (:func:`request_log_context`), the grading tasks an upload sends
carry it in their headers, and each image row keeps it, so worker lines about those images
name it too. An incoming id is honoured when it is 1-64 characters of letters, digits and
``._:+=/@-`` starting with a letter or digit; anything else is replaced rather than echoed,
so a hostile header never reaches a log.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping

from flask import Response, g, has_request_context, request

REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID_LENGTH = 64
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+=/@-]{0,63}")


def assign_request_id() -> None:
    """``before_request``: honour a valid incoming id, otherwise generate one."""
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = incoming if _VALID_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex


def current_request_id() -> str:
    """The id of the request being served."""
    if "request_id" not in g:
        assign_request_id()
    request_id: str = g.request_id
    return request_id


def echo_request_id(response: Response) -> Response:
    """``after_request``: every response names the request it answers."""
    response.headers[REQUEST_ID_HEADER] = current_request_id()
    return response


def request_log_context() -> Mapping[str, str]:
    """The request id for a log line (:func:`common.logs.add_context`); none outside a request."""
    if has_request_context() and "request_id" in g:
        return {"request_id": g.request_id}
    return {}
