"""The CLI never sends its API key to an origin other than the ``--api-url`` it was given.

Two real HTTP servers on 127.0.0.1: the "API" answers with a ``Location`` header or a
``links.next`` pointing at the second one (as a reflected ``Host: evil.example`` would),
and the second records every request it gets.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli.main import cli

KEY = "rq_secret-that-must-stay-home"


class _Recorder(BaseHTTPRequestHandler):
    """Answers from ``server.answers`` by path and records what each request carried."""

    server: _Server

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        self._read_body()
        self.server.received.append((self.command, self.path, self.headers.get("Authorization")))
        status, headers, body = self.server.answers.get(
            self.path.split("?")[0], (200, {}, {"state": "completed"})
        )
        payload = json.dumps(body).encode()
        self.send_response(status)
        for name, value in {**headers, "Content-Type": "application/json"}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _read_body(self) -> None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while size := int(self.rfile.readline().strip() or b"0", 16):
                self.rfile.read(size + 2)
            self.rfile.readline()
        else:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def log_message(self, *_: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Recorder)
        self.received: list[tuple[str, str, str | None]] = []
        self.answers: dict[str, tuple[int, dict[str, str], Any]] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def servers() -> Iterator[tuple[_Server, _Server]]:
    """The API the CLI is pointed at, and the elsewhere it is pointed to."""
    pair = (_Server(), _Server())
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in pair]
    for thread in threads:
        thread.start()
    yield pair
    for server, thread in zip(pair, threads, strict=True):
        server.shutdown()
        thread.join()
        server.server_close()


def test_submit_wait_does_not_follow_a_location_to_another_origin(
    servers: tuple[_Server, _Server], tmp_path: Path
) -> None:
    api, elsewhere = servers
    api.answers["/v1/batches"] = (
        202,
        {"Location": f"{elsewhere.url}/v1/batches/b1"},
        {"id": "b1", "image_count": 1, "state": "queued"},
    )
    image = tmp_path / "left.jpg"
    image.write_bytes(b"\xff\xd8 not really a jpeg")
    result = CliRunner().invoke(
        cli, ["submit", str(image), "--wait", "--api-url", api.url, "--api-key", KEY]
    )
    assert api.received == [("POST", "/v1/batches", f"Bearer {KEY}")]
    assert elsewhere.received == [], "the key went to another origin"
    assert result.exit_code == 1
    assert f"refusing to send the API key to {elsewhere.url}" in result.output
    assert f"the API at {api.url}" in result.output


def test_results_do_not_follow_a_next_link_to_another_origin(
    servers: tuple[_Server, _Server], tmp_path: Path
) -> None:
    api, elsewhere = servers
    api.answers["/v1/batches/b1/results"] = (
        200,
        {},
        {"items": [], "links": {"next": f"{elsewhere.url}/v1/batches/b1/results?cursor=x"}},
    )
    out = tmp_path / "results.csv"
    result = CliRunner().invoke(
        cli, ["results", "b1", "--out", str(out), "--api-url", api.url, "--api-key", KEY]
    )
    assert [path for _, path, _ in api.received] == ["/v1/batches/b1/results?limit=500"]
    assert elsewhere.received == []
    assert result.exit_code == 1
    assert f"refusing to send the API key to {elsewhere.url}" in result.output
    assert not out.exists()


def test_links_within_the_same_origin_are_followed(
    servers: tuple[_Server, _Server], tmp_path: Path
) -> None:
    api, _ = servers
    api.answers["/v1/batches/b1/results"] = (
        200,
        {},
        {"items": [], "links": {"next": f"{api.url}/v1/batches/b1/results/2"}},
    )
    api.answers["/v1/batches/b1/results/2"] = (200, {}, {"items": [], "links": {}})
    out = tmp_path / "results.csv"
    result = CliRunner().invoke(
        cli, ["results", "b1", "--out", str(out), "--api-url", api.url + "/", "--api-key", KEY]
    )
    assert result.exit_code == 0, result.output
    assert [auth for _, _, auth in api.received] == [f"Bearer {KEY}"] * 2
    assert out.read_text().startswith("image_id,filename,")
