"""gunicorn's logs in JSON (``RETINAQ_LOG_FORMAT=json``): the access log keeps its guarantees.

A request is one line of printable ASCII whatever the client sent, its fields are named, its
path carries no query string, and it names the request's ``X-Request-ID``; gunicorn's own
lines and the app's are JSON too.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator

import httpx
import pytest

from api.serving.access_log import access_fields
from tests.api.serving.test_serving import Served, _environment, _raw, _serving
from tests.log_lines import json_lines
from tests.support import wait_for


@pytest.fixture(scope="module")
def served_json(
    database_url: str, redis_url: str, queue_name: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """``retinaq api`` with its defaults, logging JSON."""
    var = tmp_path_factory.mktemp("served_json")
    env = {**_environment(var, database_url, redis_url, queue_name), "RETINAQ_LOG_FORMAT": "json"}
    with _serving([sys.executable, "-m", "cli", "api", "--port", "{port}"], env, var) as running:
        yield running


def _access_lines(served: Served, request_id: str) -> list[dict]:
    return [
        r
        for r in json_lines(served.log)
        if r["logger"] == "gunicorn.access" and r.get("request_id") == request_id
    ]


@pytest.mark.slow
def test_every_line_is_json_and_an_access_line_names_its_fields(served_json: Served) -> None:
    request_id = f"log-{uuid.uuid4().hex}"
    response = httpx.get(
        f"{served_json.url}/healthz?api_key=SECRET-{request_id}&cursor=SEALED",
        headers={"X-Request-ID": request_id},
    )
    assert response.status_code == 200
    wait_for(lambda: bool(_access_lines(served_json, request_id)), 10, "the access line")
    [line] = _access_lines(served_json, request_id)
    assert (line["method"], line["path"], line["status"]) == ("GET", "/healthz", 200)
    assert line["protocol"] == "HTTP/1.1" and line["level"] == "INFO"
    assert isinstance(line["duration_ms"], float) and line["bytes"] > 0
    assert "SECRET" not in served_json.log_text() and "SEALED" not in served_json.log_text()
    loggers = {r["logger"] for r in json_lines(served_json.log)}
    assert {"gunicorn.error", "gunicorn.access"} <= loggers


@pytest.mark.slow
def test_a_hostile_path_stays_one_printable_json_line(served_json: Served) -> None:
    request_id = f"inject-{uuid.uuid4().hex}"
    before = served_json.log_text().splitlines()
    answer = _raw(
        served_json.port,
        b"GET /v1/nothere%0a127.0.0.1%20FAKE%22,%22level%22:%22x%0d%1b%5b31m%00 HTTP/1.1\r\n"
        + f"Host: 127.0.0.1\r\nX-Request-ID: {request_id}\r\nConnection: close\r\n\r\n".encode(),
    )
    assert answer.startswith(b"HTTP/1.1 4"), answer[:100]
    wait_for(lambda: request_id in served_json.log_text(), 10, "the access line", interval=0.1)
    after = served_json.log_text().splitlines()[len(before) :]
    new = [line for line in after if request_id in line]
    assert len(new) == 1, new
    [raw] = new
    assert all(" " <= char <= "~" for char in raw), repr(raw)
    record = json.loads(raw)
    assert record["level"] == "INFO"  # the forged "level" stayed inside the path
    # Decoded, the path still holds no control character: escaped before JSON encoded it.
    assert record["path"] == (
        "/v1/nothere\\x0a127.0.0.1 FAKE\\x22,\\x22level\\x22:\\x22x\\x0d\\x1b[31m\\x00"
    )


def test_access_fields_escape_every_value_and_read_gunicorns_atoms() -> None:
    atoms = {
        "h": "10.0.0.1",
        "m": "GET",
        "U": "/v1/batches/\x1b[2J\u00e9",
        "H": "HTTP/1.1",
        "s": "404",
        "B": None,
        "D": 12_345,
        "{x-request-id}o": "abc",
    }
    fields = access_fields(atoms)
    assert fields == {
        "remote": "10.0.0.1",
        "method": "GET",
        "path": "/v1/batches/\\x1b[2J\\xe9",
        "protocol": "HTTP/1.1",
        "status": 404,
        "bytes": 0,
        "duration_ms": 12.3,
        "request_id": "abc",
    }
    assert access_fields({**atoms, "B": 512, "{x-request-id}o": None})["bytes"] == 512
    anonymous = {k: v for k, v in atoms.items() if "request" not in k}
    assert access_fields(anonymous)["request_id"] is None
