"""Keeping callbacks off internal networks (SSRF): which URLs and addresses are refused.

A callback URL is checked twice. When it is given (:func:`check_callback_url`): syntax,
scheme (https; http only where ``webhook_allow_http``), no credentials, and an IP literal's
address. When it is used (:func:`resolve_callback`): every address its name resolves to,
so a name pointing inward is refused, and the caller connects to the checked address
itself, so the name cannot be re-pointed between the check and the connection (DNS
rebinding). Refused: loopback, private, link-local, carrier-grade NAT, multicast,
unspecified, reserved and benchmarking ranges, cloud metadata addresses, and IPv6 forms
that carry an IPv4 address (mapped, 6to4, NAT64, Teredo), judged by that address. An
operator may allow networks (``webhook_allowed_networks``), e.g. a receiver on the LAN.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_LENGTH = 2048

# Ranges that ``is_global`` lets through, or that we name for a clearer refusal.
_REFUSED_NETWORKS: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(cidr), reason)
    for cidr, reason in (
        ("100.64.0.0/10", "carrier-grade NAT"),
        ("169.254.0.0/16", "link-local (cloud metadata)"),
        ("192.0.0.0/24", "IETF protocol assignments (cloud metadata)"),
        ("198.18.0.0/15", "benchmarking"),
        ("fd00:ec2::254/128", "cloud metadata"),
        # Deprecated, yet still routed inside the networks that use it; is_global says yes.
        ("fec0::/10", "site-local"),
        ("64:ff9b:1::/48", "local-use NAT64"),
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class CallbackRefused(ValueError):
    """A callback URL or address we will not call; the message says why, for the caller."""


@dataclass(frozen=True)
class CallbackTarget:
    """A checked URL's parts: what to connect to and what to call it."""

    scheme: str
    host: str  # the name (or literal) for the Host header and TLS SNI
    port: int
    target: str  # path and query, as sent


def parse_networks(values: Sequence[str]) -> tuple[IPNetwork, ...]:
    """CIDR strings as networks; a bad one raises ValueError naming it."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError as error:
            raise ValueError(f"not a network in CIDR form: {value!r}") from error
    return tuple(networks)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, NAT64, Teredo), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal_reason(address: IPAddress) -> str | None:
    """Why an address is refused as a callback destination, or None when it is public."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            reason = refusal_reason(embedded)
            return None if reason is None else f"{reason} (inside IPv6 {address})"
    for network, reason in _REFUSED_NETWORKS:
        if address.version == network.version and address in network:
            return reason
    checks = (
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (address.is_multicast, "multicast"),
        (address.is_reserved, "reserved"),
        (address.is_private, "private"),
        (not address.is_global, "not globally routable"),
    )
    return next((reason for refused, reason in checks if refused), None)


def check_address(address: IPAddress, allowed: Sequence[IPNetwork]) -> None:
    """Raise CallbackRefused unless the address is public or in an allowed network."""
    if any(address.version == net.version and address in net for net in allowed):
        return
    reason = refusal_reason(address)
    if reason is not None:
        raise CallbackRefused(f"the callback address {address} is {reason}")


def check_callback_url(
    url: str, *, allow_http: bool, allowed: Sequence[IPNetwork]
) -> CallbackTarget:
    """Check a callback URL's form (and an IP literal's address); its parts if acceptable."""
    if len(url) > MAX_URL_LENGTH:
        raise CallbackRefused(f"callback_url is longer than {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise CallbackRefused("callback_url holds whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise CallbackRefused(f"callback_url is not a valid URL: {error}") from error
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes:
        raise CallbackRefused(f"callback_url must use {' or '.join(schemes)}")
    if parts.username is not None or parts.password is not None:
        raise CallbackRefused("callback_url must not hold credentials")
    if parts.fragment:
        raise CallbackRefused("callback_url must not hold a fragment")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise CallbackRefused("callback_url names no host")
    literal = _ip_literal(host)
    if literal is not None:
        check_address(literal, allowed)
    elif host == "localhost" or host.endswith(".localhost"):
        raise CallbackRefused("the callback host is loopback (localhost)")
    else:
        try:
            host.encode("idna")
        except UnicodeError as error:
            raise CallbackRefused("callback_url's host is not a valid name") from error
    return CallbackTarget(
        scheme=parts.scheme,
        host=host,
        port=port or (443 if parts.scheme == "https" else 80),
        target=_target(parts),
    )


def _target(parts: SplitResult) -> str:
    path = parts.path or "/"
    return f"{path}?{parts.query}" if parts.query else path


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def resolve_callback(target: CallbackTarget, allowed: Sequence[IPNetwork]) -> IPAddress:
    """The address to connect to: every address the host resolves to must pass, or none is
    used (a name with one inward address is refused whole); the first is returned."""
    literal = _ip_literal(target.host)
    if literal is not None:
        check_address(literal, allowed)
        return literal
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as error:
        raise CallbackRefused(f"the callback host {target.host} does not resolve") from error
    addresses = []
    for *_, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        check_address(address, allowed)
        addresses.append(address)
    if not addresses:
        raise CallbackRefused(f"the callback host {target.host} has no address")
    return addresses[0]
