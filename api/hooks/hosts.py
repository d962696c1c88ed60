"""Which origin the API answers as: the operator's public URL, and the proxies it believes.

Every link and ``Location`` is built with ``url_for(..., _external=True)`` from the request's
scheme and host. Left alone that trusts the client's ``Host`` header, so ``Host:
evil.example`` would come back in every link. With ``RETINAQ_PUBLIC_URL`` set, each request
is served as if made to that URL (scheme, host, path prefix), and a request naming another
host is refused with 400 ``invalid_host``, except the health probes over loopback, which a
container's own health check sends to 127.0.0.1. ``RETINAQ_PROXY_HOPS`` proxies in front
are believed about the client's address, scheme and host (``X-Forwarded-For``, ``-Proto``,
``-Host``); with 0, those headers are ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, request
from werkzeug.middleware.proxy_fix import ProxyFix

from api.errors import ApiError
from common.settings import Settings

SEEN_HOST_KEY = "retinaq.seen_host"
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_DEFAULT_PORTS = {"http": 80, "https": 443}

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@dataclass(frozen=True)
class PublicOrigin:
    """The public URL split the way WSGI and Flask need it."""

    scheme: str
    host: str  # lower-case, with the port only when it is not the scheme's default
    root: str  # path prefix the proxy strips, "" for none

    @property
    def url(self) -> str:
        """The origin written back as a URL, for messages."""
        return f"{self.scheme}://{self.host}{self.root}"


def parse_public_url(url: str) -> PublicOrigin:
    """Split ``https://host[:port][/prefix]``; a query, fragment or other scheme is refused."""
    parts = urlsplit(url.strip())
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(
            f"RETINAQ_PUBLIC_URL must look like https://host[:port][/prefix], not {url!r}"
        )
    host = normalise_host(parts.netloc, parts.scheme)
    if host is None:
        raise ValueError(f"RETINAQ_PUBLIC_URL has an invalid host or port: {url!r}")
    return PublicOrigin(parts.scheme, host, parts.path.rstrip("/"))


def normalise_host(host: str, scheme: str) -> str | None:
    """``Host`` as compared: lower-case, default port dropped; None when it cannot parse."""
    try:
        parts = urlsplit(f"//{host.strip()}")
        hostname, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not hostname or parts.username is not None or parts.path:
        return None
    name = f"[{hostname}]" if ":" in hostname else hostname
    return name if port in (None, _DEFAULT_PORTS[scheme]) else f"{name}:{port}"


def is_loopback(host: str) -> bool:
    """Whether a ``Host`` header names this machine's loopback interface."""
    try:
        return urlsplit(f"//{host.strip()}").hostname in LOOPBACK_HOSTS
    except ValueError:
        return False


class ServeAsPublicOrigin:
    """WSGI middleware: remember the host the client named, then present the public origin."""

    def __init__(self, app: WSGIApp, origin: PublicOrigin) -> None:
        self.app = app
        self.origin = origin

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        """Rewrite scheme, host and script root before Flask builds any URL."""
        seen = environ.get("HTTP_HOST") or (
            f"{environ.get('SERVER_NAME', '')}:{environ.get('SERVER_PORT', '')}"
        )
        environ[SEEN_HOST_KEY] = seen
        environ["wsgi.url_scheme"] = self.origin.scheme
        environ["HTTP_HOST"] = self.origin.host
        environ["SCRIPT_NAME"] = self.origin.root
        return self.app(environ, start_response)


def refuse_other_hosts(origin: PublicOrigin) -> Callable[[], None]:
    """A ``before_request`` hook answering 400 to requests made to another host."""

    def check() -> None:
        seen = request.environ.get(SEEN_HOST_KEY, "")
        if normalise_host(seen, origin.scheme) == origin.host:
            return
        if request.path in PROBE_PATHS and is_loopback(seen):
            return
        raise ApiError(400, "invalid_host", f"this API answers only as {origin.url}")

    return check


def install_origin(app: Flask, settings: Settings) -> None:
    """Wire the public URL and the trusted proxies into ``app`` (see the module docstring)."""
    if settings.public_url:
        origin = parse_public_url(settings.public_url)
        # For URLs built outside a request (the same origin the middleware presents).
        app.config.update(
            SERVER_NAME=origin.host,
            PREFERRED_URL_SCHEME=origin.scheme,
            APPLICATION_ROOT=origin.root or "/",
        )
        # Flask's documented way to add WSGI middleware, which mypy sees as replacing a method.
        app.wsgi_app = ServeAsPublicOrigin(app.wsgi_app, origin)  # type: ignore[method-assign]
        app.before_request(refuse_other_hosts(origin))
    if settings.proxy_hops:
        hops = settings.proxy_hops
        # Outermost, so the host checked above is the one the client gave the proxy.
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]  # as above
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops
        )
