"""One webhook attempt over HTTP, connected to the address that was checked (SSRF).

The callback's host is resolved and every address checked
(:func:`common.webhooks.addresses.resolve_callback`); the request then goes to that IP
address, with the name in the ``Host`` header and as the TLS server name (so the
certificate is still verified for the name), so DNS cannot hand the connection another
address between check and connect. Redirects are not followed: a 3xx is a failed attempt
(following one would reach an unchecked address). Environment proxies are ignored, the
whole attempt has one deadline, and at most :data:`MAX_RESPONSE_BYTES` of the answer are
read.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence

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
