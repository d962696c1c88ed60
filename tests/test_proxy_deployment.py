"""The reverse proxy in docker-compose.yml, checked by reading (no Docker engine here)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from api.hooks.hosts import parse_public_url
from common.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SERVICES = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
PROXY = SERVICES["proxy"]
API = SERVICES["api"]


def _nginx_conf() -> str:
    [mount] = [v for v in PROXY["volumes"] if v.endswith(":/etc/nginx/conf.d/default.conf:ro")]
    path = ROOT / mount.split(":")[0]
    assert path.is_file(), path
    text = path.read_text()
    return re.sub(r"#[^\n]*", "", text)  # directives only


def _directive(conf: str, name: str) -> list[str]:
    return re.findall(rf"^\s*{name}\s+([^;{{]+);", conf, flags=re.MULTILINE)


def _compose_default(value: str) -> str:
    match = re.fullmatch(r"\$\{\w+:-([^}]+)\}", value)
    assert match, value
    return match.group(1)


def test_only_the_proxy_is_published() -> None:
    assert "ports" not in API
    assert API["expose"] == ["8000"]
    assert [p.rsplit(":", 1)[1] for p in PROXY["ports"]] == ["80"]
    for name, service in SERVICES.items():
        if name != "proxy":
            for port in service.get("ports", []):
                assert port.startswith("127.0.0.1:"), (name, port)


def test_the_api_trusts_one_hop_and_knows_its_public_url() -> None:
    env = API["environment"]
    assert env["RETINAQ_PROXY_HOPS"] == "1"
    origin = parse_public_url(_compose_default(env["RETINAQ_PUBLIC_URL"]))
    published = _compose_default(PROXY["ports"][0].rsplit(":", 1)[0])
    assert origin.host.endswith(f":{published}")
    assert PROXY["depends_on"]["api"]["condition"] == "service_healthy"


def test_proxy_forwards_to_the_api_with_the_headers_the_api_trusts() -> None:
    conf = _nginx_conf()
    command = API["command"]
    assert _directive(conf, "server") == [f"api:{command[command.index('--port') + 1]}"]
    headers = dict(h.split(None, 1) for h in _directive(conf, "proxy_set_header"))
    assert headers["X-Forwarded-Proto"] == "$scheme"
    assert headers["X-Forwarded-Host"] == "$http_host"
    assert headers["X-Forwarded-For"] == "$proxy_add_x_forwarded_for"


def test_proxy_bounds_slow_clients_and_request_size() -> None:
    conf = _nginx_conf()

    def seconds(name: str) -> int:
        [value] = _directive(conf, name)
        return int(value.removesuffix("s"))

    assert seconds("client_header_timeout") <= 15
    assert 30 <= seconds("client_body_timeout") <= 120  # idle gap, not the whole upload
    [limit] = _directive(conf, "client_max_body_size")
    assert int(limit.removesuffix("m")) * 2**20 == Settings().max_request_bytes


def test_uploads_stream_through_and_everything_else_is_buffered() -> None:
    conf = _nginx_conf()
    blocks = dict(re.findall(r"location\s+([^{]+?)\s*\{([^}]*)\}", conf))
    for upload in ("= /v1/batches", "~ ^/v1/batches/[^/]+/images$"):
        assert "proxy_request_buffering off" in blocks[upload], upload
    assert "proxy_request_buffering" not in blocks["/"]
    assert _directive(conf, "proxy_buffering") == ["on"]


def test_metrics_are_not_served_through_the_proxy() -> None:
    conf = _nginx_conf()
    block = conf[conf.index("location = /metrics {") :]
    block = block[: block.index("\n    }")]  # the block's own closing brace
    assert "return 404" in block and "proxy_pass" not in block
