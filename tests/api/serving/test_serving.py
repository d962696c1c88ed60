"""The API as served by ``retinaq api`` (gunicorn and our worker class), over raw sockets.

Slow clients and stalled uploads must not stall it, its own refusals (malformed heads and
chunked bodies included) are JSON, and its access log carries no query strings and one
line per request. Unit tables for the worker's head-readiness rule and error mapping close
the file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from gunicorn.http import errors

from api.serving.errors import classify_error
from api.serving.head_first import HEADER_TIMEOUT_S, head_ready
from tests.support import REPO_ROOT, free_port, wait_for

SLOW_CLIENTS = 50
SLOW_LINE_EVERY_S = 2.0
UPLOAD_FILES = 4
UPLOAD_FILE_BYTES = 50 * 1024 * 1024  # 4 × 50 MiB ≈ 200 MiB, under the 64 MiB per-file limit
UPLOAD_RATE = 20 * 1024 * 1024  # bytes/s: a slow link, kept short so the test stays ~30 s


@dataclass
class Served:
    """A running ``retinaq api`` and where its output goes."""

    url: str
    port: int
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def _serving(argv: list[str], env: dict[str, str], var: Path) -> Iterator[Served]:
    """Start a server on a free port (``{port}`` in ``argv``); stop it, whatever happens."""
    port = free_port()
    log = var / "api.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [part.format(port=port) for part in argv],
            env=env,
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = Served(f"http://127.0.0.1:{port}", port, log)

    def healthy() -> bool:
        assert process.poll() is None, running.log_text()
        try:
            return httpx.get(f"{running.url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(healthy, 60, "the API to start", interval=0.3)
        yield running
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        shutil.rmtree(var / "images", ignore_errors=True)


def _environment(var: Path, database_url: str, redis_url: str, queue_name: str) -> dict[str, str]:
    return {
        **os.environ,
        "RETINAQ_VAR_DIR": str(var),
        "RETINAQ_DATABASE_URL": database_url,
        "RETINAQ_BROKER_URL": redis_url,
        "RETINAQ_STORAGE_DIR": str(var / "images"),
        "RETINAQ_QUEUE_NAME": queue_name,
        "RETINAQ_HEATMAP_QUEUE_NAME": f"{queue_name}.explain",
        "RETINAQ_SECRET_KEY": "serving-test-secret-key-for-cursors",
        # These tests read the text access log; test_access_log_json.py reads the JSON one.
        "RETINAQ_LOG_FORMAT": "text",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="module")
def served(
    database_url: str, redis_url: str, queue_name: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """``retinaq api`` with its defaults (2 processes), on the test database and queue."""
    var = tmp_path_factory.mktemp("served")
    env = _environment(var, database_url, redis_url, queue_name)
    with _serving([sys.executable, "-m", "cli", "api", "--port", "{port}"], env, var) as running:
        yield running


QUICK_WORKER = """
from api.serving.head_first import HeadFirstWorker


class QuickTimeouts(HeadFirstWorker):
    header_timeout_s = 2.0
    body_idle_timeout_s = 2.0
"""


@pytest.fixture
def served_one_thread(
    database_url: str, redis_url: str, queue_name: str, tmp_path: Path
) -> Iterator[Served]:
    """One process of one thread, with 2 s timeouts: a thread held is the whole server."""
    (tmp_path / "quick_worker.py").write_text(QUICK_WORKER)
    env = _environment(tmp_path, database_url, redis_url, queue_name)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        "python:api.serving.gunicorn_conf",
        "--worker-class",
        "quick_worker.QuickTimeouts",
        "--workers",
        "1",
        "--threads",
        "1",
        "--bind",
        "127.0.0.1:{port}",
        "api.wsgi:app",
    ]
    with _serving(argv, env, tmp_path) as running:
        yield running


def _raw(port: int, data: bytes, timeout: float = 10) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def _json_error(raw: bytes) -> tuple[int, dict[str, str]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers["content-type"] == "application/json", raw[:300]
    return int(lines[0].split()[1]), json.loads(body)["error"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "request_line_too_long"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n", 400, "invalid_header"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Broken\r\n\r\n", 400, "invalid_header"),
        (
            b"GET /healthz HTTP/1.1\r\n"
            + b"".join(b"X-%d: y\r\n" % i for i in range(150))
            + b"\r\n",
            431,
            "headers_too_large",
        ),
        (b"G<T /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400, "invalid_request_line"),
        (b"GARBAGE\r\n\r\n", 400, "invalid_request_line"),
        (b"GET\r\n\r\n", 400, "invalid_request_line"),
        (b"GET /healthz HTTP/1.1\nHost: x\n\n", 400, "invalid_request_line"),
        (b"GET /v1/batches/\xff HTTP/1.1\r\nHost: x\r\n\r\n", 400, "invalid_path"),
        # One field over gunicorn's 8190 bytes, though the head is under 64 KiB.
        (
            b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 60000 + b"\r\n\r\n",
            431,
            "headers_too_large",
        ),
        # 70 KB of header lines and no end yet: refused without waiting for the rest.
        (
            b"GET /healthz HTTP/1.1\r\n"
            + b"".join(b"X-Big-%d: %s\r\n" % (n, b"y" * 7000) for n in range(10)),
            431,
            "headers_too_large",
        ),
    ],
)
def test_the_servers_own_refusals_are_json(
    served: Served, request_bytes: bytes, status: int, code: str
) -> None:
    answer = _raw(served.port, request_bytes)
    assert b"<html" not in answer.lower()
    got, error = _json_error(answer)
    assert (got, error["code"]) == (status, code)
    assert error["message"] and "Bad" not in error["message"]  # the input is not echoed


@pytest.mark.slow
def test_access_log_never_carries_the_query_string(served: Served) -> None:
    request_id = f"log-{uuid.uuid4().hex}"
    response = httpx.get(
        f"{served.url}/healthz?api_key=SECRET-{request_id}&cursor=SEALED",
        headers={"X-Request-ID": request_id},
    )
    assert response.status_code == 200

    def logged() -> list[str]:
        return [line for line in served.log_text().splitlines() if request_id in line]

    wait_for(lambda: bool(logged()), 10, "the access line", interval=0.1)
    [line] = logged()
    assert '"GET /healthz HTTP/1.1" 200' in line
    assert "SECRET" not in served.log_text()
    assert "SEALED" not in served.log_text()
    assert "api_key" not in line


def _chunked_post(auth: dict[str, str], content_type: str, body: bytes) -> bytes:
    return (
        "POST /v1/batches HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: {auth['Authorization']}\r\nContent-Type: {content_type}\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode() + body


@pytest.mark.slow
@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b"ZZ%(marker)s\r\n{}\r\n0\r\n\r\n"),
        ("application/json", b"-2\r\n{}\r\n0\r\n\r\n"),
        ("application/json", b"5\r\n{}\r\n0\r\n\r\n"),  # shorter than it said
        ("application/json", b"2\r\n{}XX0\r\n\r\n"),  # no CRLF after the data
        ("application/json", b"2;\x00%(marker)s\r\n{}\r\n0\r\n\r\n"),  # a bad extension
        ("multipart/form-data; boundary=xx", b"G\r\n--xx\r\n0\r\n\r\n"),
        # A size no request may have: refused at once, not after the body idle timeout.
        ("application/json", b"FFFFFFFFFFFFFFFFFFFF\r\n{}\r\n0\r\n\r\n"),
    ],
)
def test_a_malformed_chunked_body_is_400_invalid_chunked_body_not_logged(
    served: Served, make_programme: Callable[[str], dict[str, str]], content_type: str, body: bytes
) -> None:
    marker = uuid.uuid4().hex
    auth = make_programme("Chunked")
    started = time.monotonic()
    answer = _raw(
        served.port, _chunked_post(auth, content_type, body % {b"marker": marker.encode()})
    )
    assert time.monotonic() - started < 5
    status, error = _json_error(answer)
    assert (status, error["code"]) == (400, "invalid_chunked_body")
    assert b"\r\nconnection: close\r\n" in answer.partition(b"\r\n\r\n")[0].lower() + b"\r\n"
    time.sleep(0.3)  # the access line and any traceback are written after the answer
    assert marker not in served.log_text()
    assert "InvalidChunk" not in served.log_text()


@pytest.mark.slow
def test_access_log_gives_a_request_one_line_of_printable_characters(served: Served) -> None:
    request_id = f"inject-{uuid.uuid4().hex}"
    before = served.log_text().splitlines()
    answer = _raw(
        served.port,
        b"GET /v1/nothere%0a127.0.0.1%20FAKE%0d%1b%5b31m%00 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"X-Request-ID: {request_id}\r\nConnection: close\r\n\r\n".encode(),
    )
    assert answer.startswith(b"HTTP/1.1 4"), answer[:100]
    wait_for(lambda: request_id in served.log_text(), 10, "the access line", interval=0.1)
    after = served.log_text().splitlines()
    new = [line for line in after[len(before) :] if "Invalid request" not in line]
    assert len(new) == 1, new
    [line] = new
    assert request_id in line and "FAKE" in line
    assert all(" " <= char <= "~" for char in line), repr(line)
    assert "/v1/nothere\\x0a127.0.0.1 FAKE\\x0d\\x1b[31m\\x00 " in line


@pytest.fixture
def served_one_process(
    database_url: str, redis_url: str, queue_name: str, tmp_path: Path
) -> Iterator[Served]:
    """``retinaq api`` as configured (8 threads), in one process so the caps are exact."""
    env = _environment(tmp_path, database_url, redis_url, queue_name)
    argv = [sys.executable, "-m", "cli", "api", "--port", "{port}", "--workers", "1"]
    with _serving(argv, env, tmp_path) as running:
        yield running


def _stalled_upload(port: int, auth: dict[str, str]) -> socket.socket:
    """An upload whose head is complete and whose body stops after a few bytes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(
        (
            f"POST /v1/batches HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: {auth['Authorization']}\r\n"
            "Content-Type: multipart/form-data; boundary=xx\r\nContent-Length: 1000000\r\n\r\n"
            "--xx\r\n"
        ).encode()
    )
    return sock


def _answer_within(sock: socket.socket, seconds: float) -> bytes | None:
    """The server's answer if it comes within ``seconds`` (None: the request is still held)."""
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return received or None
    return received


@pytest.mark.slow
def test_stalled_uploads_of_one_key_leave_threads_for_everyone_else(
    served_one_process: Served,
    make_programme: Callable[[str], dict[str, str]],
    fundus_jpeg: Callable[..., bytes],
) -> None:
    served = served_one_process
    hostile, other = make_programme("Stalls uploads"), make_programme("Uploads too")
    opened = httpx.post(f"{served.url}/v1/batches", headers=other, json={"open": True})
    assert opened.status_code == 201
    stalled = [_stalled_upload(served.port, hostile) for _ in range(16)]
    try:
        answers = [_answer_within(sock, 1.0) for sock in stalled]
        # 8 threads, 2 reserved: 6 body slots, of which one key may hold 3.
        assert answers.count(None) == 3, answers
        for answer in answers:
            if answer is not None:
                status, error = _json_error(answer)
                assert (status, error["code"]) == (503, "server_busy")
                assert b"\r\nRetry-After: 5\r\n" in answer

        fresh = httpx.Client(headers={"Connection": "close"}, timeout=5)
        assert _timed(lambda: fresh.get(f"{served.url}/healthz"), 200) < 1.0
        assert _timed(lambda: fresh.get(f"{served.url}/readyz"), 200) < 1.0
        assert _timed(lambda: fresh.get(opened.headers["Location"], headers=other), 200) < 1.0
        upload = fresh.post(
            f"{served.url}/v1/batches",
            headers=other,
            files=[("images", ("eye.jpg", fundus_jpeg(), "image/jpeg"))],
        )
        assert upload.status_code == 202, upload.text
        fresh.close()

        seventeenth = _stalled_upload(served.port, hostile)
        stalled.append(seventeenth)
        status, error = _json_error(_answer_within(seventeenth, 2.0) or b"")
        assert (status, error["code"]) == (503, "server_busy")
    finally:
        for sock in stalled:
            sock.close()


class SlowClients:
    """Connections that send a request head one header line at a time, never finishing it."""

    def __init__(self, port: int, count: int) -> None:
        self.sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
        self.opened = time.monotonic()
        for sock in self.sockets:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._thread.start()

    def _trickle(self) -> None:
        line = 0
        while not self._stop.wait(SLOW_LINE_EVERY_S):
            line += 1
            for sock in self.sockets:
                try:
                    sock.sendall(b"X-Slow-%d: still typing\r\n" % line)
                except OSError:
                    pass  # closed by the server: that is what should happen

    def answers(self, within_s: float) -> list[bytes]:
        """What each connection got before the server closed it (bounded by ``within_s``)."""
        answers = []
        for sock in self.sockets:
            received = b""
            try:
                while (left := self.opened + within_s - time.monotonic()) > 0:
                    sock.settimeout(left)
                    if not (chunk := sock.recv(65536)):
                        break
                    received += chunk
            except (TimeoutError, OSError):
                received += b"<still open>"
            answers.append(received)
        return answers

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for sock in self.sockets:
            sock.close()


def _timed(get: Callable[[], httpx.Response], expected: int) -> float:
    started = time.perf_counter()
    response = get()
    elapsed = time.perf_counter() - started
    assert response.status_code == expected, response.text
    return elapsed


def _throttled_multipart(boundary: str) -> tuple[int, Iterator[bytes]]:
    """A ~200 MiB multipart body of four file parts, produced at ``UPLOAD_RATE``."""
    block = os.urandom(1024 * 1024)
    parts = [
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; '
            f'filename="big-{n}.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        ).encode()
        for n in range(UPLOAD_FILES)
    ]
    closing = f"--{boundary}--\r\n".encode()
    length = sum(len(p) + UPLOAD_FILE_BYTES + 2 for p in parts) + len(closing)

    def body() -> Iterator[bytes]:
        started, sent = time.monotonic(), 0
        for n, part in enumerate(parts):
            yield part
            # A different first byte per file: four distinct images, not one stored once.
            yield bytes([n]) + block[1:]
            for _ in range(UPLOAD_FILE_BYTES // len(block) - 1):
                sent += len(block)
                pause = started + sent / UPLOAD_RATE - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                yield block
            yield b"\r\n"
        yield closing

    return length, body()


@pytest.mark.slow
def test_slow_heads_do_not_stall_the_api_and_a_slow_upload_succeeds(
    served: Served, make_programme: Callable[[str], dict[str, str]]
) -> None:
    auth = make_programme("Slow clients")
    opened = httpx.post(f"{served.url}/v1/batches", headers=auth, json={"open": True})
    assert opened.status_code == 201
    status_url = opened.headers["Location"]

    # "Connection: close": every request opens a fresh connection, so accepting is timed too.
    fresh = httpx.Client(headers={"Connection": "close"}, timeout=5)
    slow = SlowClients(served.port, SLOW_CLIENTS)
    try:
        time.sleep(SLOW_LINE_EVERY_S + 0.5)  # every slow client has sent a second line
        health, polls = [], []
        for _ in range(20):
            health.append(_timed(lambda: fresh.get(f"{served.url}/healthz"), 200))
            polls.append(_timed(lambda: fresh.get(status_url, headers=auth), 200))

        # A ~200 MiB upload over a slow link holds one thread; /healthz keeps answering.
        boundary = uuid.uuid4().hex
        length, body = _throttled_multipart(boundary)
        during: list[float] = []
        uploading = threading.Event()
        uploading.set()

        def probe() -> None:
            while uploading.is_set():
                during.append(_timed(lambda: fresh.get(f"{served.url}/healthz"), 200))
                time.sleep(0.5)

        prober = threading.Thread(target=probe)
        prober.start()
        started = time.monotonic()
        try:
            upload = httpx.post(
                f"{status_url}/images",
                headers={
                    **auth,
                    "Content-Type": f"multipart/form-data; boundary={boundary}",
                    "Content-Length": str(length),
                },
                content=body,
                timeout=120,
            )
        finally:
            uploading.clear()
            prober.join(timeout=10)
        upload_s = time.monotonic() - started
        assert upload.status_code == 202, upload.text
        assert upload.json()["image_count"] == UPLOAD_FILES

        # The slow heads were closed by the server, with a 408 in our error shape.
        answers = slow.answers(within_s=HEADER_TIMEOUT_S + 10)
    finally:
        slow.close()
        fresh.close()

    print(
        f"\n{SLOW_CLIENTS} slow heads open: /healthz p50 {statistics.median(health) * 1e3:.1f} ms"
        f" max {max(health) * 1e3:.1f} ms; status poll p50 {statistics.median(polls) * 1e3:.1f}"
        f" ms max {max(polls) * 1e3:.1f} ms; {length / 2**20:.0f} MiB upload in {upload_s:.1f} s,"
        f" /healthz meanwhile p50 {statistics.median(during) * 1e3:.1f} ms"
        f" max {max(during) * 1e3:.1f} ms (n={len(during)})"
    )
    assert max(health) < 1.0
    assert max(polls) < 1.0
    assert during and max(during) < 1.0
    assert all(_json_error(answer)[0] == 408 for answer in answers), set(answers)


@pytest.mark.slow
def test_a_body_that_goes_silent_frees_its_thread(
    served_one_thread: Served, make_programme: Callable[[str], dict[str, str]]
) -> None:
    served = served_one_thread
    auth = make_programme("Silent body")
    opened = httpx.post(f"{served.url}/v1/batches", headers=auth, json={"open": True})
    assert opened.status_code == 201
    path = opened.headers["Location"].split(str(served.port), 1)[1] + "/images"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: {auth['Authorization']}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
        '--b\r\nContent-Disposition: form-data; name="images"; filename="a.jpg"\r\n\r\n'
    ).encode()
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", served.port), timeout=15) as stalled:
            stalled.sendall(head + b"x" * 1000)  # then nothing more
            started = time.monotonic()
            answer = b""
            while chunk := stalled.recv(65536):
                answer += chunk
            waited = time.monotonic() - started
            # The one thread is free again for everyone else.
            assert httpx.get(f"{served.url}/healthz", timeout=5).status_code == 200
        # The opening request's body slot is freed by the event loop after its answer went
        # out, so on a loaded machine the next upload can meet 503 server_busy first: a
        # client retries that, and so does this test.
        if not answer.startswith(b"HTTP/1.1 503"):
            break
        time.sleep(0.2)
    assert 1.5 < waited < 10, waited
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == "body_timeout"


@pytest.mark.slow
def test_a_head_that_never_ends_gets_408_in_our_shape(served_one_thread: Served) -> None:
    with socket.create_connection(("127.0.0.1", served_one_thread.port), timeout=15) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        # Meanwhile the server's only thread serves others.
        assert httpx.get(f"{served_one_thread.url}/healthz", timeout=5).status_code == 200
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status, error = _json_error(answer)
    assert (status, error["code"]) == (408, "request_timeout")


@pytest.mark.parametrize(
    ("head", "ready"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (b"\r\nGET / HTTP/1.1\r\n\r\n", True),  # one leading empty line is allowed
        (b"GET / HTTP/1.1\r\nHost: x\r\n", False),  # a header line, then nothing yet
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r", False),
        (b"GET / HT", False),
        (b"", False),
        (b"GET / HTTP/1.1\nHost: x", True),  # bare LF: the parser refuses it at once
        (b"GET /" + b"a" * 200, True),  # the line is already longer than the limit
        (b"GET /" + b"a" * 90, False),
        (b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost", True),
    ],
)
def test_a_head_goes_to_a_thread_only_when_the_parser_need_not_wait(
    head: bytes, ready: bool
) -> None:
    assert head_ready(head, line_limit=100) is ready


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (errors.LimitRequestLine(5000, 4094), 414, "request_line_too_long"),
        (errors.LimitRequestHeaders("max"), 431, "headers_too_large"),
        (errors.InvalidHeaderName("Bad Header"), 400, "invalid_header"),
        (errors.InvalidRequestMethod("G<T"), 400, "invalid_request_line"),
        (errors.InvalidResponseHeaderName("x y"), 500, "internal_error"),  # the app's fault
        (errors.UnsupportedTransferCoding("gzip"), 501, "unsupported_transfer_coding"),
        (errors.InvalidRequestLine("GARBAGE"), 400, "invalid_request_line"),
        (errors.InvalidRequestLine("GET /\xff HTTP/1.1"), 400, "invalid_path"),
        (errors.InvalidRequestLine("GET /\x1b HTTP/1.1"), 400, "invalid_path"),
        (RuntimeError("boom"), 500, "internal_error"),
    ],
)
def test_gunicorn_errors_map_to_our_codes(exc: Exception, status: int, code: str) -> None:
    assert classify_error(exc)[:2] == (status, code)
