"""The server's own refusals in the API's JSON error shape, never gunicorn's HTML page.

gunicorn raises its own exceptions for a request it cannot parse (a malformed or oversized
request line or header, a bad chunked body); :func:`classify_error` maps each to a status
and a stable code, and :func:`json_error` writes the whole response the event loop or a
thread sends before closing.
"""

from __future__ import annotations

import json
from http import HTTPStatus

from gunicorn.http import errors

# (exception types, status, code, message); the first match wins. Messages are fixed
# sentences: the client's bytes never travel back to it or into the log.
_CLIENT_ERRORS: tuple[tuple[tuple[type[BaseException], ...], int, str, str], ...] = (
    (
        # New in gunicorn 27; types-gunicorn describes 26.2 and does not list them yet.
        (errors.InvalidResponseHeader, errors.InvalidResponseHeaderName),  # type: ignore[attr-defined]
        500,
        "internal_error",
        "an unexpected error occurred",
    ),
    (
        (errors.LimitRequestLine,),
        414,
        "request_line_too_long",
        "the request line is longer than the server accepts",
    ),
    (
        (errors.LimitRequestHeaders,),
        431,
        "headers_too_large",
        "the request has too many header fields or one that is too large",
    ),
    (
        (errors.InvalidHeader, errors.InvalidHeaderName, errors.ObsoleteFolding),
        400,
        "invalid_header",
        "a request header is malformed",
    ),
    (
        (errors.InvalidRequestLine, errors.InvalidRequestMethod, errors.InvalidHTTPVersion),
        400,
        "invalid_request_line",
        "the request line is malformed",
    ),
    (
        (errors.InvalidChunkSize, errors.ChunkMissingTerminator, errors.InvalidChunkExtension),
        400,
        "invalid_chunked_body",
        "the chunked request body is malformed",
    ),
    (
        (errors.UnsupportedTransferCoding,),
        501,
        "unsupported_transfer_coding",
        "the request's Transfer-Encoding is not supported",
    ),
    (
        (errors.ExpectationFailed,),
        417,
        "expectation_failed",
        "the request's Expect header cannot be met",
    ),
    (
        (errors.ForbiddenProxyRequest,),
        403,
        "forbidden",
        "proxy requests are not accepted from this address",
    ),
    (
        (
            errors.InvalidProxyLine,
            errors.InvalidProxyHeader,
            errors.InvalidSchemeHeaders,
            errors.InvalidH2CPreface,
        ),
        400,
        "bad_request",
        "the request could not be understood",
    ),
)


def json_error(status: int, code: str, message: str, extra_headers: str = "") -> bytes:
    """A complete ``Connection: close`` response in the API's error shape."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"{extra_headers}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def _has_unprintable(text: object) -> bool:
    return isinstance(text, str) and any(not " " <= char <= "~" for char in text)


def classify_error(exc: BaseException) -> tuple[int, str, str]:
    """Status, code and message for an exception gunicorn raised while reading a request."""
    # gunicorn keeps the refused line (latin-1 text) on the exception: control or
    # non-ASCII bytes there are a target that is no valid path, not a garbled line.
    if isinstance(exc, errors.InvalidRequestLine) and _has_unprintable(exc.req):
        return 400, "invalid_path", "the request target has bytes a path may not contain"
    for kinds, status, code, message in _CLIENT_ERRORS:
        if isinstance(exc, kinds):
            return status, code, message
    return 500, "internal_error", "an unexpected error occurred"
