"""The SSRF guard: which addresses and callback URLs are refused, and the allow-list."""

from __future__ import annotations

import ipaddress

import pytest

from common.webhooks.addresses import (
    CallbackRefused,
    CallbackTarget,
    check_address,
    check_callback_url,
    parse_networks,
    refusal_reason,
    resolve_callback,
)

REFUSED = [
    ("127.0.0.1", "loopback"),
    ("127.255.0.9", "loopback"),
    ("::1", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("192.168.1.1", "private"),
    ("fd12:3456::1", "private"),
    ("169.254.169.254", "link-local (cloud metadata)"),
    ("169.254.0.1", "link-local (cloud metadata)"),
    ("fe80::1", "link-local"),
    ("fec0::1", "site-local"),
    ("fd00:ec2::254", "cloud metadata"),
    ("192.0.0.192", "IETF protocol assignments (cloud metadata)"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.100.100.200", "carrier-grade NAT"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"),
    ("::", "unspecified"),
    ("198.18.0.1", "benchmarking"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("192.0.2.1", "private"),  # TEST-NET-1, documentation
    ("::ffff:127.0.0.1", "loopback (inside IPv6 ::ffff:7f00:1)"),
    ("::ffff:169.254.169.254", "link-local (cloud metadata) (inside IPv6 ::ffff:a9fe:a9fe)"),
    ("::ffff:10.0.0.1", "private (inside IPv6 ::ffff:a00:1)"),
    ("2002:7f00:1::", "loopback (inside IPv6 2002:7f00:1::)"),  # 6to4 of 127.0.0.1
    ("64:ff9b::a9fe:a9fe", "link-local (cloud metadata) (inside IPv6 64:ff9b::a9fe:a9fe)"),
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "2001:4860:4860::8888", "::ffff:8.8.8.8", "64:ff9b::808:808"]


@pytest.mark.parametrize(("address", "reason"), REFUSED)
def test_internal_addresses_are_refused_with_their_class(address: str, reason: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) == reason
    with pytest.raises(CallbackRefused, match="is "):
        check_address(ipaddress.ip_address(address), ())


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert refusal_reason(ipaddress.ip_address(address)) is None


def test_an_allowed_network_lets_its_addresses_through_and_no_others() -> None:
    allowed = parse_networks(["127.0.0.1/32", "10.0.0.0/8"])
    check_address(ipaddress.ip_address("127.0.0.1"), allowed)
    check_address(ipaddress.ip_address("10.9.9.9"), allowed)
    with pytest.raises(CallbackRefused):
        check_address(ipaddress.ip_address("127.0.0.2"), allowed)
    with pytest.raises(CallbackRefused):
        check_address(ipaddress.ip_address("169.254.169.254"), allowed)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://example.com/hook", "must use https"),
        ("ftp://example.com/hook", "must use https"),
        ("https://user:pw@example.com/hook", "credentials"),
        ("https:///hook", "no host"),
        ("https://example.com/ho ok", "whitespace"),
        ("https://example.com/hook#frag", "fragment"),
        ("https://example.com:99999/", "not a valid URL"),
        ("https://127.0.0.1/hook", "loopback"),
        ("https://[::ffff:169.254.169.254]/hook", "cloud metadata"),
        ("https://localhost/hook", "localhost"),
        ("https://api.localhost./hook", "localhost"),
        ("https://example.com/" + "a" * 2048, "longer than"),
    ],
)
def test_unacceptable_callback_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(CallbackRefused, match=message):
        check_callback_url(url, allow_http=False, allowed=())


def test_an_acceptable_url_is_split_for_a_pinned_connection() -> None:
    target = check_callback_url(
        "https://hooks.example.org:8443/in/retinaq?key=1", allow_http=False, allowed=()
    )
    assert target == CallbackTarget("https", "hooks.example.org", 8443, "/in/retinaq?key=1")
    plain = check_callback_url(
        "http://[2001:db8::1]/", allow_http=True, allowed=parse_networks(["2001:db8::/32"])
    )
    assert (plain.scheme, plain.host, plain.port) == ("http", "2001:db8::1", 80)


def test_a_name_resolving_inward_is_refused_at_delivery() -> None:
    target = check_callback_url("http://localhost.test.invalid/", allow_http=True, allowed=())
    with pytest.raises(CallbackRefused, match="does not resolve"):
        resolve_callback(target, ())
    loopback_name = CallbackTarget("http", "localhost", 80, "/")
    with pytest.raises(CallbackRefused, match="loopback"):
        resolve_callback(loopback_name, ())
    assert resolve_callback(loopback_name, parse_networks(["127.0.0.0/8", "::1/128"])).is_loopback
