"""RETINAQ_PUBLIC_URL and RETINAQ_PROXY_HOPS over HTTP: links, Location and the Host check."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask
from werkzeug.test import TestResponse

from api.hooks.hosts import normalise_host, parse_public_url

PUBLIC = "https://retinaq.example.org"


def _open_batch(app: Flask, auth: dict[str, str], **headers: str) -> TestResponse:
    return app.test_client().post("/v1/batches", headers={**auth, **headers}, json={"open": True})


def _all_links(body: dict) -> list[str]:
    return list(body["links"].values())


def test_without_a_public_url_links_follow_the_request_host(
    make_app: Callable[..., Flask], auth: dict[str, str]
) -> None:
    response = _open_batch(make_app(), auth, Host="api.internal:8000")
    assert response.status_code == 201
    assert response.headers["Location"].startswith("http://api.internal:8000/v1/batches/")


def test_public_url_builds_every_link_and_location(
    make_app: Callable[..., Flask], auth: dict[str, str]
) -> None:
    app = make_app(public_url=f"{PUBLIC}/screening")
    response = _open_batch(app, auth, Host="retinaq.example.org")
    assert response.status_code == 201, response.get_json()
    batch = response.get_json()
    assert response.headers["Location"] == f"{PUBLIC}/screening/v1/batches/{batch['id']}"
    assert all(link.startswith(f"{PUBLIC}/screening/v1/") for link in _all_links(batch))
    status = app.test_client().get(f"/v1/batches/{batch['id']}", headers=auth)
    assert status.get_json()["links"]["self"] == response.headers["Location"]


def test_public_url_refuses_another_host_with_json_400(
    make_app: Callable[..., Flask], auth: dict[str, str]
) -> None:
    app = make_app(public_url=PUBLIC)
    client = app.test_client()
    refused = _open_batch(app, auth, Host="evil.example")
    assert refused.status_code == 400
    assert refused.get_json()["error"]["code"] == "invalid_host"
    assert "Location" not in refused.headers
    assert b"evil.example" not in refused.data
    assert client.get("/v1/batches", headers={**auth, "Host": "evil.example"}).status_code == 400
    assert client.get("/healthz", headers={"Host": "evil.example"}).status_code == 400
    # Nothing was created by the refused request.
    assert client.get("/v1/batches", headers=auth).get_json()["items"] == []
    # The same host in another spelling is the same host.
    assert _open_batch(app, auth, Host="RETINAQ.example.org:443").status_code == 201


def test_health_probes_over_loopback_still_answer_with_a_public_url(
    make_app: Callable[..., Flask], auth: dict[str, str]
) -> None:
    client = make_app(public_url=PUBLIC).test_client()
    for host in ("127.0.0.1:8000", "localhost", "[::1]:8000"):
        assert client.get("/healthz", headers={"Host": host}).status_code == 200, host
        assert client.get("/readyz", headers={"Host": host}).status_code == 200, host
    # Loopback is a way in for the probes only.
    refused = client.get("/v1/batches", headers={**auth, "Host": "127.0.0.1:8000"})
    assert refused.status_code == 400
    assert refused.get_json()["error"]["code"] == "invalid_host"


FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "api.example.org"}


def test_one_proxy_hop_honours_forwarded_proto_and_host(
    make_app: Callable[..., Flask], auth: dict[str, str]
) -> None:
    response = _open_batch(make_app(proxy_hops=1), auth, Host="api:8000", **FORWARDED)
    assert response.headers["Location"].startswith("https://api.example.org/v1/batches/")
    assert all(
        link.startswith("https://api.example.org/") for link in _all_links(response.get_json())
    )


def test_no_proxy_hops_ignore_forwarded_headers(
    make_app: Callable[..., Flask], auth: dict[str, str]
) -> None:
    response = _open_batch(make_app(proxy_hops=0), auth, Host="api:8000", **FORWARDED)
    assert response.headers["Location"].startswith("http://api:8000/v1/batches/")


def test_behind_a_proxy_the_forwarded_host_is_the_one_checked(
    make_app: Callable[..., Flask], auth: dict[str, str]
) -> None:
    app = make_app(public_url=PUBLIC, proxy_hops=1)
    ok = _open_batch(
        app, auth, Host="api:8000", **{**FORWARDED, "X-Forwarded-Host": "retinaq.example.org"}
    )
    assert ok.status_code == 201
    assert ok.headers["Location"].startswith(f"{PUBLIC}/v1/batches/")
    assert _open_batch(app, auth, Host="api:8000", **FORWARDED).status_code == 400


@pytest.mark.parametrize(
    ("url", "scheme", "host", "root"),
    [
        ("https://Retinaq.Example.org", "https", "retinaq.example.org", ""),
        ("https://retinaq.example.org:443/", "https", "retinaq.example.org", ""),
        ("http://localhost:8080", "http", "localhost:8080", ""),
        ("https://example.org/screening/", "https", "example.org", "/screening"),
        ("http://[::1]:8000", "http", "[::1]:8000", ""),
    ],
)
def test_public_url_is_split_for_wsgi(url: str, scheme: str, host: str, root: str) -> None:
    origin = parse_public_url(url)
    assert (origin.scheme, origin.host, origin.root) == (scheme, host, root)


@pytest.mark.parametrize(
    "url", ["ftp://example.org", "example.org", "https://", "https://x.org/?a=1", "https://x:99999"]
)
def test_a_malformed_public_url_stops_the_api_at_start(
    url: str, make_app: Callable[..., Flask]
) -> None:
    with pytest.raises(ValueError, match="RETINAQ_PUBLIC_URL"):
        make_app(public_url=url)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("Example.ORG:443", "example.org"),
        ("example.org:8443", "example.org:8443"),
        ("user@example.org", None),
        ("example.org/path", None),
        ("example.org:port", None),
        ("", None),
    ],
)
def test_host_headers_are_compared_normalised(host: str, expected: str | None) -> None:
    assert normalise_host(host, "https") == expected
