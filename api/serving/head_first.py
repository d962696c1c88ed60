"""The API's gunicorn worker: a thread serves a request only once its whole head is here.

gunicorn's ``gthread`` worker gives a connection to a thread as soon as its first byte
arrives, and the thread then blocks until the request's header block is complete: as many
clients as there are threads, each sending a header line now and then, stall every other
request. This worker keeps connections in its event loop while their head arrives (reading
whatever is there, never blocking) and hands a connection to a thread only once the head is
complete, or has gone wrong in a way the parser will refuse at once. A head that is not
complete ``HEADER_TIMEOUT_S`` after the connection (or a kept-alive connection's next
request) started is answered 408 and closed; one larger than ``MAX_HEAD_BYTES`` gets 431.

A request *body* is read on the thread, by design: uploads stream into the image store as
they arrive. Each read of the socket is bounded by ``BODY_IDLE_TIMEOUT_S`` (a client that
goes silent mid-body gets 408 ``body_timeout``), and so is each write of a response. So that
stalled bodies cannot hold every thread, a process admits only so many requests with a
body at once, and one API key only a share of them (``api.serving.admission``); one over either cap
is answered 503 ``server_busy`` from the event loop, without a thread. A body gunicorn
cannot parse is the client's error, not the app's (``api.serving.request_bodies``). The server's
own errors (a malformed or oversized request line or header) answer in the API's JSON error
shape instead of gunicorn's HTML page, and a connection closed after one of them lingers
briefly in the event loop, reading, so that the client gets the answer instead of a reset.
"""

from __future__ import annotations

import selectors
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from http import HTTPStatus
from typing import Any

from gunicorn import util
from gunicorn.http.message import MAX_REQUEST_LINE, Request
from gunicorn.http.parser import Parser
from gunicorn.http.wsgi import Response, default_environ
from gunicorn.workers.gthread import TConn, ThreadWorker

from api.serving.admission import BodyRequest, BodySlots, body_request
from api.serving.errors import classify_error, json_error
from api.serving.request_bodies import guard_body
from common.settings import get_settings

HEADER_TIMEOUT_S = 15.0
BODY_IDLE_TIMEOUT_S = 60.0
MAX_HEAD_BYTES = 64 * 1024
BUSY_RETRY_AFTER_S = 5
# A closed connection's unread bytes would make the kernel reset it, and the client could
# lose the answer written just before: read and drop what comes for this long (or this much).
LINGER_S = 2.0
LINGER_MAX_BYTES = 1024 * 1024
_READ_SIZE = 64 * 1024


@dataclass
class _ConnState:
    """What this worker keeps on one of gunicorn's connections, beside gunicorn's own fields."""

    head: bytearray = field(default_factory=bytearray)  # read so far, not yet parsed
    head_complete: bool = False  # so the next enqueue_req hands the connection to a thread
    body_slot: BodyRequest | None = None
    lingered: int = 0  # bytes read and dropped since the connection was refused


def _state(conn: TConn) -> _ConnState:
    """This worker's state for ``conn``, attached on first use: gunicorn makes the TConn."""
    state = vars(conn).get("head_first")
    if isinstance(state, _ConnState):
        return state
    fresh = _ConnState()
    vars(conn)["head_first"] = fresh
    return fresh


def _expired(conn: TConn, now: float) -> bool:
    """Whether a connection this worker set a deadline on is past it."""
    return conn.timeout is not None and conn.timeout <= now


def _recv_now(sock: socket.socket) -> bytes | None:
    """What the client has sent, without blocking: None when nothing is there yet, empty
    when it closed (or the socket failed)."""
    try:
        return sock.recv(_READ_SIZE)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


def head_ready(head: bytes, line_limit: int) -> bool:
    """True once gunicorn's parser can serve or refuse the head without waiting for more.

    That is a complete head, a bare LF (refused as soon as seen), or a request line already
    longer than ``line_limit`` (refused as soon as seen); anything else needs more bytes,
    and a thread given it now would block on the client.
    """
    if b"\r\n\r\n" in head or head.count(b"\n") != head.count(b"\r\n"):
        return True
    line = head[2:] if head.startswith(b"\r\n") else head  # one empty line may lead
    end = line.find(b"\r\n")
    return (end if end >= 0 else len(line) - 2) > line_limit + 2


def _bound_socket_waits(sock: socket.socket, seconds: float) -> None:
    """Kernel-level limits on each blocking recv/send, which gunicorn's blocking mode keeps."""
    whole = int(seconds)
    timeval = struct.pack("@ll", whole, int((seconds - whole) * 1_000_000))
    for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, timeval)
        except OSError:  # a platform without them keeps gunicorn's unbounded waits
            pass


class HeadFirstWorker(ThreadWorker):
    """``gthread`` whose threads never wait for a request head; see the module docstring."""

    header_timeout_s = HEADER_TIMEOUT_S
    body_idle_timeout_s = BODY_IDLE_TIMEOUT_S
    max_head_bytes = MAX_HEAD_BYTES

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """Refuse TLS and cleartext HTTP/2: their first bytes are not an HTTP/1 head."""
        super().check_config(cfg, log)
        if cfg.is_ssl or cfg.http2_cleartext != "off":
            raise RuntimeError(
                "HeadFirstWorker serves plain HTTP/1.x; terminate TLS and HTTP/2 at the proxy"
            )

    def init_process(self) -> None:
        """Size this process's body slots from its thread count, then run as ``gthread``."""
        settings = get_settings()
        self.body_slots = BodySlots.for_threads(
            int(self.cfg.threads), settings.api_reserved_threads, settings.api_key_upload_share
        )
        self.max_chunk_bytes = settings.max_request_bytes
        self.closing_conns: deque[TConn] = deque()
        super().init_process()  # runs the event loop until the worker stops

    def _line_limit(self) -> int:
        limit = int(self.cfg.limit_request_line)
        return limit if 0 < limit < MAX_REQUEST_LINE else MAX_REQUEST_LINE

    def enqueue_req(self, conn: TConn) -> None:
        """Give a connection to a thread only with a ready head; otherwise wait for it here."""
        state = _state(conn)
        if state.head_complete:
            state.head_complete = False
            super().enqueue_req(conn)
            return
        # Bytes the last request's parser read ahead are the start of the next head.
        parser = conn.parser
        state.head = bytearray(
            parser.unreader.take_buffered() if isinstance(parser, Parser) else b""
        )
        if head_ready(bytes(state.head), self._line_limit()):
            self._hand_over(conn)
            return
        conn.sock.setblocking(False)
        conn.timeout = time.monotonic() + self.header_timeout_s
        self.pending_conns.append(conn)
        self.poller.register(
            conn.sock, selectors.EVENT_READ, partial(self.on_pending_socket_readable, conn)
        )

    def on_pending_socket_readable(self, conn: TConn, client: Any) -> None:
        """Read what the client sent of its head, without blocking; hand it over once ready."""
        data = _recv_now(conn.sock)
        if data is None:
            return
        if not data:
            self._drop_pending(conn)
            return
        state = _state(conn)
        state.head += data
        if head_ready(bytes(state.head), self._line_limit()):
            self._unwatch(conn)
            self._hand_over(conn)
        elif len(state.head) > self.max_head_bytes:
            self._drop_pending(
                conn,
                json_error(
                    431,
                    "headers_too_large",
                    f"the request head exceeds {self.max_head_bytes // 1024} KiB",
                ),
            )

    def on_closing_socket_readable(self, conn: TConn, client: Any) -> None:
        """Drop what a refused client still sends until it stops (or sends too much)."""
        data = _recv_now(conn.sock)
        if data is None:
            return
        state = _state(conn)
        state.lingered += len(data)
        if not data or state.lingered > LINGER_MAX_BYTES:
            self._close_lingering(conn)

    def murder_pending(self) -> None:
        """Close connections whose head is late (408 when they had begun one) or who lingered."""
        now = time.monotonic()
        while self.pending_conns and _expired(self.pending_conns[0], now):
            conn = self.pending_conns[0]
            late = json_error(
                408,
                "request_timeout",
                f"the request head did not arrive within {self.header_timeout_s:g} s",
            )
            self._drop_pending(conn, late if _state(conn).head else None)
        while self.closing_conns and _expired(self.closing_conns[0], now):
            self._close_lingering(self.closing_conns[0])

    def finish_request(self, conn: TConn, fs: Any) -> None:
        """Free the body slot the request held, then keep or close the connection as usual."""
        state = _state(conn)
        held = state.body_slot
        if held is not None:
            state.body_slot = None
            self.body_slots.release(held)
        super().finish_request(conn, fs)

    def handle(self, conn: TConn) -> Any:
        """On a thread: give the parser the head read so far, then serve as ``gthread`` does."""
        state = _state(conn)
        head = bytes(state.head)
        state.head = bytearray()
        if not conn.initialized:
            conn.sock.setblocking(True)
            _bound_socket_waits(conn.sock, self.body_idle_timeout_s)
            conn.init()
        parser = conn.parser
        assert isinstance(parser, Parser)  # HTTP/1.x: check_config refuses TLS and HTTP/2
        parser.unreader.unread(head)
        return super().handle(conn)

    def handle_request(self, req: Any, conn: TConn) -> bool:
        """Serve one request, its body read through
        :func:`api.serving.request_bodies.guard_body`."""
        guard_body(req, self.max_chunk_bytes, self.body_idle_timeout_s)
        return bool(super().handle_request(req, conn))

    def _keepalive_after(self, conn: TConn, keepalive: bool) -> bool:
        # The answer has gone out: a body that cannot be drained (malformed, stalled) only
        # means the connection closes; it must not become a second, error, response.
        try:
            # gunicorn 27's, which types-gunicorn (written for 26.2) does not list yet.
            return bool(super()._keepalive_after(conn, keepalive))  # type: ignore[misc]
        except Exception:
            return False

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        """gunicorn's own refusals, in the API's JSON error shape, without echoing input."""
        request_start = datetime.now()
        addr = addr or ("", -1)  # a unix socket has no peer address
        status, code, message = classify_error(exc)
        if status >= 500:
            self.log.exception("Error handling request")
        else:
            self.log.warning(
                "Invalid request from ip=%s: %s (%s)", addr[0], code, exc.__class__.__name__
            )
        payload = json_error(status, code, message)
        # The answer first: nothing below may stand between a refused client and it.
        try:
            util.write_nonblock(client, payload)
        except Exception:
            self.log.debug("Failed to send error message.")
        # Some errors carry the request they refused; InvalidRequestLine's ``req`` is text.
        req = req if req is not None else getattr(exc, "req", None)
        if isinstance(req, Request):
            environ = default_environ(req, client, self.cfg)
            environ["REMOTE_ADDR"] = addr[0]
            environ["REMOTE_PORT"] = str(addr[1])
            resp = Response(req, client, self.cfg)
            resp.status = f"{status} {HTTPStatus(status).phrase}"
            resp.response_length = len(payload)
            self.log.access(resp, req, environ, datetime.now() - request_start)

    def _hand_over(self, conn: TConn) -> None:
        state = _state(conn)
        body = body_request(bytes(state.head))
        if body is not None:
            if not self.body_slots.acquire(body):
                self._refuse_busy(conn)
                return
            state.body_slot = body
        state.head_complete = True
        conn.data_ready = True
        self.enqueue_req(conn)

    def _refuse_busy(self, conn: TConn) -> None:
        self.log.warning(
            "Busy: refused a request body from ip=%s (%d of %d body slots in use)",
            conn.client[0] if isinstance(conn.client, tuple) else "",
            self.body_slots.in_use,
            self.body_slots.total,
        )
        busy = json_error(
            503,
            "server_busy",
            "the server is receiving as many request bodies as it allows, in all or for "
            f"this API key; retry in {BUSY_RETRY_AFTER_S} s",
            f"Retry-After: {BUSY_RETRY_AFTER_S}\r\n",
        )
        self._drop_pending(conn, busy)

    def _unwatch(self, conn: TConn) -> None:
        try:
            self.poller.unregister(conn.sock)
        except (OSError, KeyError, ValueError):
            pass
        try:
            self.pending_conns.remove(conn)
        except ValueError:
            pass

    def _drop_pending(self, conn: TConn, farewell: bytes | None = None) -> None:
        self._unwatch(conn)
        if farewell:
            try:
                conn.sock.setblocking(False)
                conn.sock.send(farewell)  # non-blocking: best effort, never waits
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            else:
                conn.timeout = time.monotonic() + LINGER_S
                _state(conn).lingered = 0
                self.closing_conns.append(conn)
                self.poller.register(
                    conn.sock,
                    selectors.EVENT_READ,
                    partial(self.on_closing_socket_readable, conn),
                )
                return
        self.nr_conns -= 1
        conn.close()

    def _close_lingering(self, conn: TConn) -> None:
        try:
            self.poller.unregister(conn.sock)
        except (OSError, KeyError, ValueError):
            pass
        self.closing_conns.remove(conn)
        self.nr_conns -= 1
        conn.close()
