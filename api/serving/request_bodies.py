"""A request body as the app reads it: malformed, oversized or stalled bodies are client errors.

gunicorn raises its own exceptions (``InvalidChunkSize`` and friends, or the socket's
timeout) from inside the application's ``wsgi.input.read()``; Flask saw them as unexpected
errors, answered 500 and logged a traceback whose exception text held the client's bytes.
Here each becomes an :class:`~api.errors.ApiError` that the app's error handler answers in
the usual shape, with a fixed message; the failed body also marks the request
``Connection: close``, since where the next request would start is unknown.
"""

from __future__ import annotations

import errno
from typing import Any, Protocol

from gunicorn.http import errors
from gunicorn.http.body import ChunkedReader

from api.errors import ApiError

_STALLED = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ETIMEDOUT})


class _Reader(Protocol):
    def read(self, size: int) -> bytes: ...


def invalid_chunked_body() -> ApiError:
    """The one answer to a chunked body gunicorn cannot parse or that breaks off."""
    return ApiError(400, "invalid_chunked_body", "the chunked request body is malformed")


class BoundedChunkedReader(ChunkedReader):
    """gunicorn's chunked reader, refusing a chunk larger than any request may be.

    Unchecked, a size like ``FFFFFFFFFFFFFFFFFFFF`` makes the reader wait for bytes that
    will never come, holding its thread until the body idle timeout.
    """

    def __init__(self, req: Any, unreader: Any, max_chunk_bytes: int) -> None:
        super().__init__(req, unreader)
        self.max_chunk_bytes = max_chunk_bytes

    def parse_chunk_size(self, unreader: Any, data: bytes | None = None) -> tuple[int, Any]:
        """gunicorn's parse, then the size checked against the request limit."""
        size, rest = super().parse_chunk_size(unreader, data)
        if size > self.max_chunk_bytes:
            raise errors.InvalidChunkSize(b"over the request size limit")
        return size, rest


class ClientErrorReader:
    """Wraps a gunicorn body reader so that what the client did wrong raises an ApiError."""

    def __init__(self, inner: _Reader, req: Any, timeout_s: float) -> None:
        self.inner = inner
        self.req = req
        self.timeout_s = timeout_s

    def read(self, size: int) -> bytes:
        """Read as gunicorn does; a malformed, cut-off or stalled body is the client's error."""
        try:
            return self.inner.read(size)
        except (
            errors.InvalidChunkSize,
            errors.ChunkMissingTerminator,
            errors.InvalidChunkExtension,
            errors.InvalidHeader,
            errors.InvalidHeaderName,
            errors.LimitRequestHeaders,
            errors.NoMoreData,
        ):
            raise self._failed(invalid_chunked_body()) from None
        except TimeoutError:
            raise self._failed(self._timed_out()) from None
        except OSError as exc:
            # SO_RCVTIMEO on a blocking socket ends a silent wait as EAGAIN.
            if exc.errno in _STALLED:
                raise self._failed(self._timed_out()) from None
            raise

    def _timed_out(self) -> ApiError:
        return ApiError(408, "body_timeout", f"the request body stalled for {self.timeout_s:g} s")

    def _failed(self, error: ApiError) -> ApiError:
        self.req.must_close = True
        return error


def guard_body(req: Any, max_chunk_bytes: int, timeout_s: float) -> None:
    """Give ``req`` a body reader that turns client faults into ApiErrors (before any read)."""
    body = getattr(req, "body", None)
    if body is None:
        return
    reader = body.reader
    if type(reader) is ChunkedReader:
        reader = BoundedChunkedReader(req, req.unreader, max_chunk_bytes)
    body.reader = ClientErrorReader(reader, req, timeout_s)
