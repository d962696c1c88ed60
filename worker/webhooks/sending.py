"""One webhook attempt over HTTP, connected to the address that was checked (SSRF).

The callback's host is resolved and every address checked
(:func:`common.webhooks.addresses.resolve_callback`); the request then goes to that IP
address, with the name in the ``Host`` header and as the TLS server name (so the
certificate is still verified for the name), so DNS cannot hand the connection another
address between check and connect. Redirects are not followed: a 3xx is a failed attempt
(following one would reach an unchecked address). Environment proxies are ignored, the
whole attempt has one deadline, and at most :data:`MAX_RESPONSE_BYTES` of the answer are
read.

The deadline is kept by the sockets themselves (:class:`_DeadlineBackend`): every connect,
TLS handshake, read and write is given at most the time left, so a receiver that trickles
its status line a byte every few seconds (each read within httpx's per-read timeout) still
loses the attempt at the deadline instead of holding a delivery thread for days.
"""

from __future__ import annotations

import ipaddress
import ssl
import time
from collections.abc import Iterable, Sequence
from typing import Any

import httpcore
import httpx

from common.db.tables import utcnow
from common.settings import Settings
from common.webhooks.addresses import (
    CallbackRefused,
    CallbackTarget,
    IPNetwork,
    check_callback_url,
    parse_networks,
    resolve_callback,
)
from common.webhooks.deliveries import AttemptOutcome, ClaimedDelivery
from common.webhooks.signing import signed_headers

MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = "RetinaQ-Webhooks/1"


def allowed_networks(settings: Settings) -> tuple[IPNetwork, ...]:
    """The operator's allowed networks as objects."""
    return parse_networks(settings.webhook_allowed_networks)


def post_event(
    claimed: ClaimedDelivery, settings: Settings, allowed: Sequence[IPNetwork]
) -> AttemptOutcome:
    """POST one event once; every failure comes back as an outcome, never raised."""
    started_at, clock = utcnow(), time.monotonic()

    def outcome(
        status: int | None = None, code: str | None = None, message: str | None = None
    ) -> AttemptOutcome:
        elapsed = (time.monotonic() - clock) * 1000
        return AttemptOutcome(started_at, elapsed, status, code, message)

    if claimed.secret is None:
        return outcome(code="no_secret", message="the programme has no webhook signing secret")
    try:
        target = check_callback_url(
            claimed.url, allow_http=settings.webhook_allow_http, allowed=allowed
        )
        address = resolve_callback(target, allowed)
    except CallbackRefused as refused:
        return outcome(code="address_refused", message=str(refused))
    headers = {
        **signed_headers(claimed.secret, claimed.id, claimed.body),
        "Host": _host_header(target),
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
    }
    deadline = clock + settings.webhook_timeout_s
    try:
        with httpx.Client(
            transport=_deadline_transport(deadline),
            timeout=httpx.Timeout(settings.webhook_timeout_s),
            follow_redirects=False,
            trust_env=False,
        ) as client:
            request = client.build_request(
                "POST",
                _pinned_url(target, address),
                content=claimed.body.encode(),
                headers=headers,
                extensions={"sni_hostname": target.host},
            )
            response = client.send(request, stream=True)
            try:
                _read_bounded(response, deadline)
                status = response.status_code
                location = response.headers.get("location", "")
            finally:
                response.close()
    except httpx.TimeoutException:
        return outcome(code="timeout", message=f"no answer within {settings.webhook_timeout_s}s")
    except _DeadlinePassed:
        return outcome(
            code="timeout", message=f"answer not read within {settings.webhook_timeout_s}s"
        )
    except httpx.ConnectError as error:
        return outcome(code="connect_error", message=f"could not connect: {error}")
    except httpx.HTTPError as error:
        return outcome(code="http_error", message=f"{error.__class__.__name__}: {error}")
    if 200 <= status < 300:
        return outcome(status)
    if 300 <= status < 400:
        return outcome(
            status,
            "redirect",
            f"HTTP {status} to {location[:200]!r}: redirects are not followed; "
            "set the callback URL to the final address",
        )
    return outcome(status, "http_status", f"HTTP {status}")


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every operation gets at most the time left before the deadline."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: float) -> None:
        self._stream = stream
        self._deadline = deadline

    def _left(self, timeout: float | None, error: type[Exception]) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise error("the attempt's deadline passed")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        left = self._left(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._stream.start_tls(ssl_context, server_hostname, left), self._deadline
        )

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's own sockets, each wrapped in a :class:`_DeadlineStream`."""

    def __init__(self, deadline: float) -> None:
        self._sockets = httpcore.SyncBackend()
        self._deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise httpcore.ConnectTimeout("the attempt's deadline passed")
        timeout = left if timeout is None else min(timeout, left)
        stream = self._sockets.connect_tcp(host, port, timeout, local_address, socket_options)
        return _DeadlineStream(stream, self._deadline)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("webhooks are sent over TCP only")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def _deadline_transport(deadline: float) -> httpx.HTTPTransport:
    """httpx's transport on a pool whose sockets keep ``deadline``. httpx offers no
    network-backend argument, so its pool is replaced by an equal one that has ours (one
    connection: an attempt makes one request)."""
    transport = httpx.HTTPTransport(retries=0, trust_env=False)
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        max_connections=1,
        network_backend=_DeadlineBackend(deadline),
    )
    return transport


class _DeadlinePassed(Exception):
    """The receiver trickled its answer past the attempt's deadline."""


def _read_bounded(response: httpx.Response, deadline: float) -> None:
    """Read at most MAX_RESPONSE_BYTES of the answer, by the deadline; the rest is dropped."""
    read = 0
    for chunk in response.iter_raw(chunk_size=8192):
        read += len(chunk)
        if time.monotonic() > deadline:
            raise _DeadlinePassed
        if read >= MAX_RESPONSE_BYTES:
            return


def _pinned_url(
    target: CallbackTarget, address: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> str:
    """The URL with the checked address in place of the name."""
    host = f"[{address}]" if address.version == 6 else str(address)
    return f"{target.scheme}://{host}:{target.port}{target.target}"


def _host_header(target: CallbackTarget) -> str:
    """``Host`` as the name would have given it: the port only when not the default."""
    host = f"[{target.host}]" if ":" in target.host else target.host
    default = 443 if target.scheme == "https" else 80
    return host if target.port == default else f"{host}:{target.port}"
