"""Webhook delivery against a receiver the test runs on 127.0.0.1 (allowed by the test's
settings), real PostgreSQL and Redis: signatures, retries keeping the webhook-id, the
delivery log, SSRF refusals at delivery time, redirects, and the reconciler's re-send."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks.webhooks import Webhook

from common.access.apikeys import create_programme
from common.db.tables import (
    Batch,
    BatchState,
    WebhookAttempt,
    WebhookDelivery,
    WebhookState,
    utcnow,
)
from common.lifecycle.progress import settle_batch
from common.queue import DELIVER_WEBHOOK_TASK, make_celery
from common.settings import Settings
from common.webhooks.deliveries import send_due
from common.webhooks.programmes import configure_webhook
from tests.support import running_stack, wait_for
from worker.webhooks.delivery import DeliveryRuntime, deliver
from worker.webhooks.sending import allowed_networks

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Receiver:
    """A webhook receiver: answers each POST with the next scripted status (then 204)."""

    port: int
    statuses: list[int] = field(default_factory=list)
    location: str = ""
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/retinaq"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(port=0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
            status = state.statuses.pop(0) if state.statuses else 204
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", state.location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:  # noqa: N802 (http.server's name): a readiness probe
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def webhook_settings(settings: Settings) -> Settings:
    """Settings that let callbacks reach the receiver on loopback, over http."""
    return settings.model_copy(
        update={
            "webhook_allowed_networks": ("127.0.0.1/32",),
            "webhook_allow_http": True,
            "webhook_queue_name": f"{settings.queue_name}.webhooks",
            "webhook_backoff_s": 30.0,
            "webhook_timeout_s": 5.0,
        }
    )


@pytest.fixture
def webhook_queue(
    redis_client: redis.Redis, webhook_settings: Settings
) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The delivery tasks waiting in the real Redis webhooks queue (emptied after)."""
    name = webhook_settings.webhook_queue_name

    def read() -> list[dict[str, Any]]:
        return [json.loads(raw) for raw in redis_client.lrange(name, 0, -1)]

    yield read
    redis_client.delete(name)


def _runtime(settings: Settings, sessions: sessionmaker[Session]) -> DeliveryRuntime:
    return DeliveryRuntime(settings, sessions, allowed_networks(settings), make_celery(settings))


def _completed_batch(
    sessions: sessionmaker[Session], url: str | None, *, programme_url: str | None = None
) -> tuple[uuid.UUID, str, str]:
    """A batch completed with a webhook event: the batch, the event's id, the secret."""
    batch_id, delivery_id, secret = _settled_batch(sessions, url, programme_url=programme_url)
    assert delivery_id is not None
    return batch_id, delivery_id, secret


def _settled_batch(
    sessions: sessionmaker[Session], url: str | None, *, programme_url: str | None = None
) -> tuple[uuid.UUID, str | None, str]:
    """A programme with webhooks, a closed batch with nothing pending, settled: the batch,
    its event's id if one was recorded, and the signing secret."""
    with sessions.begin() as session:
        programme, _ = create_programme(session, f"P-{uuid.uuid4().hex[:8]}")
        setup = configure_webhook(session, programme.id, url=programme_url)
        now = utcnow()
        batch = Batch(
            programme_id=programme.id,
            reference="clinic-7",
            state=BatchState.QUEUED,
            image_count=0,
            callback_url=url,
            created_at=now,
            closed_at=now,
        )
        session.add(batch)
        session.flush()
        settle_batch(session, batch.id)
        delivery_id = session.scalars(
            select(WebhookDelivery.id).where(WebhookDelivery.batch_id == batch.id)
        ).one_or_none()
    assert setup.new_secret is not None
    return batch.id, delivery_id, setup.new_secret


def _make_due(sessions: sessionmaker[Session], delivery_id: str) -> None:
    """Time passes until the retry is due."""
    with sessions.begin() as session:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id)
            .values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )


def _attempts(sessions: sessionmaker[Session], delivery_id: str) -> list[WebhookAttempt]:
    with sessions() as session:
        return list(
            session.scalars(
                select(WebhookAttempt)
                .where(WebhookAttempt.delivery_id == delivery_id)
                .order_by(WebhookAttempt.attempt)
            )
        )


def test_a_completed_batch_is_posted_signed_and_retried_after_a_500_with_the_same_id(
    receiver: Receiver,
    webhook_settings: Settings,
    sessions: sessionmaker[Session],
    webhook_queue: Callable[[], list[dict[str, Any]]],
) -> None:
    batch_id, delivery_id, secret = _completed_batch(sessions, receiver.url)
    receiver.statuses = [500]
    runtime = _runtime(webhook_settings, sessions)

    assert deliver(runtime, delivery_id) == "pending"
    retries = webhook_queue()
    assert [m["headers"]["task"] for m in retries] == [DELIVER_WEBHOOK_TASK]
    assert retries[0]["headers"]["eta"] is not None  # sent with the backoff's delay
    assert deliver(runtime, delivery_id) == "skipped"  # the retry is not due yet

    _make_due(sessions, delivery_id)
    assert deliver(runtime, delivery_id) == "delivered"
    assert deliver(runtime, delivery_id) == "skipped"  # a duplicate message does nothing

    assert len(receiver.requests) == 2
    ids = {headers["webhook-id"] for headers, _ in receiver.requests}
    assert ids == {delivery_id} and delivery_id.startswith("msg_")
    for headers, body in receiver.requests:
        assert headers["content-type"] == "application/json"
        assert headers["host"] == f"127.0.0.1:{receiver.port}"
        event = Webhook(secret).verify(body, headers)
        assert event["type"] == "batch.completed"
        assert event["data"]["batch_id"] == str(batch_id)
        assert event["data"]["reference"] == "clinic-7"
        assert event["data"]["state"] == "completed"
        assert set(event["data"]["counts"]) == {
            "graded",
            "ungradable",
            "failed",
            "cancelled",
            "referable",
        }
    assert receiver.requests[0][1] == receiver.requests[1][1]  # the same bytes, retried

    log = _attempts(sessions, delivery_id)
    assert [(a.attempt, a.status_code, a.error_code) for a in log] == [
        (1, 500, "http_status"),
        (2, 204, None),
    ]
    assert all(a.duration_ms >= 0 for a in log)
    with sessions() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        assert delivery is not None
        assert delivery.state == WebhookState.DELIVERED and delivery.attempts == 2
        assert delivery.finished_at is not None


def test_the_programme_default_url_is_used_when_the_batch_names_none(
    receiver: Receiver, webhook_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    _, delivery_id, _ = _completed_batch(sessions, None, programme_url=receiver.url)
    assert deliver(_runtime(webhook_settings, sessions), delivery_id) == "delivered"
    assert len(receiver.requests) == 1


def test_a_programme_without_any_url_records_no_event(sessions: sessionmaker[Session]) -> None:
    _, delivery_id, _ = _settled_batch(sessions, None)
    assert delivery_id is None


def test_loopback_is_refused_at_delivery_without_the_allow_list(
    receiver: Receiver, webhook_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    _, delivery_id, _ = _completed_batch(sessions, receiver.url)
    closed = webhook_settings.model_copy(update={"webhook_allowed_networks": ()})
    assert deliver(_runtime(closed, sessions), delivery_id) == "pending"
    assert receiver.requests == []
    [attempt] = _attempts(sessions, delivery_id)
    assert attempt.error_code == "address_refused" and attempt.status_code is None
    assert "loopback" in (attempt.error_message or "")


def test_a_name_resolving_to_loopback_is_refused_and_an_allowed_one_is_pinned(
    receiver: Receiver,
    webhook_settings: Settings,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The name resolves once, to 127.0.0.1; any later lookup of it would give the metadata
    address (DNS rebinding): the connection must go to the address that was checked."""
    real = socket.getaddrinfo
    lookups: list[str] = []

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "receiver.example":
            lookups.append(host)
            address = "127.0.0.1" if len(lookups) == 1 else "169.254.169.254"
            return real(address, port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    url = f"http://receiver.example:{receiver.port}/hooks"
    _, refused_id, _ = _completed_batch(sessions, url)
    closed = webhook_settings.model_copy(update={"webhook_allowed_networks": ()})
    assert deliver(_runtime(closed, sessions), refused_id) == "pending"
    [attempt] = _attempts(sessions, refused_id)
    assert attempt.error_code == "address_refused"
    assert "127.0.0.1 is loopback" in (attempt.error_message or "")
    assert receiver.requests == []

    lookups.clear()
    _, pinned_id, _ = _completed_batch(sessions, url)
    assert deliver(_runtime(webhook_settings, sessions), pinned_id) == "delivered"
    assert lookups == ["receiver.example"]  # resolved once, by the check
    [(headers, _)] = receiver.requests
    assert headers["host"] == f"receiver.example:{receiver.port}"


def test_a_redirect_is_a_failed_attempt_and_is_not_followed(
    receiver: Receiver, webhook_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    _, delivery_id, _ = _completed_batch(sessions, receiver.url)
    receiver.statuses = [302]
    receiver.location = "http://169.254.169.254/latest/meta-data/"
    assert deliver(_runtime(webhook_settings, sessions), delivery_id) == "pending"
    assert len(receiver.requests) == 1
    [attempt] = _attempts(sessions, delivery_id)
    assert (attempt.status_code, attempt.error_code) == (302, "redirect")
    assert "not followed" in (attempt.error_message or "")


def test_an_event_is_given_up_after_its_attempts(
    receiver: Receiver, webhook_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    _, delivery_id, _ = _completed_batch(sessions, receiver.url)
    receiver.statuses = [503, 503]
    runtime = _runtime(webhook_settings.model_copy(update={"webhook_max_attempts": 2}), sessions)
    assert deliver(runtime, delivery_id) == "pending"
    _make_due(sessions, delivery_id)
    assert deliver(runtime, delivery_id) == "failed"
    _make_due(sessions, delivery_id)
    assert deliver(runtime, delivery_id) == "skipped"
    assert len(receiver.requests) == 2


def test_the_reconciler_sends_new_events_once_and_lost_ones_again(
    receiver: Receiver, webhook_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    _, delivery_id, _ = _completed_batch(sessions, receiver.url)
    with sessions.begin() as session:
        assert send_due(session, webhook_settings) == [delivery_id]
    with sessions.begin() as session:
        assert send_due(session, webhook_settings) == []  # its task is on its way
    later = utcnow() + timedelta(seconds=webhook_settings.webhook_resend_after_s + 1)
    with sessions.begin() as session:
        assert send_due(session, webhook_settings, later) == [delivery_id]  # the task was lost
    too_late = utcnow() + timedelta(seconds=webhook_settings.webhook_max_age_s + 1)
    with sessions.begin() as session:
        assert send_due(session, webhook_settings, too_late) == []
        assert session.get(WebhookDelivery, delivery_id).state == WebhookState.FAILED  # type: ignore[union-attr]


def test_backoff_doubles_with_jitter_up_to_its_cap(webhook_settings: Settings) -> None:
    from common.webhooks.deliveries import backoff_s

    top = webhook_settings.model_copy(
        update={"webhook_backoff_s": 10.0, "webhook_backoff_max_s": 60.0}
    )
    assert [backoff_s(n, top, lambda low, high: high) for n in (1, 2, 3, 4, 5)] == [
        10.0,
        20.0,
        40.0,
        60.0,
        60.0,
    ]
    assert backoff_s(3, top, lambda low, high: low) == 20.0
    draws = {backoff_s(3, top) for _ in range(50)}
    assert len(draws) > 1 and all(20.0 <= d <= 40.0 for d in draws)


@pytest.mark.slow
def test_a_real_webhooks_worker_and_reconciler_deliver_and_retry(
    receiver: Receiver,
    sessions: sessionmaker[Session],
    database_url: str,
    redis_url: str,
    queue_name: str,
    tmp_path: Path,
) -> None:
    """``retinaq reconcile`` sends the new event, ``retinaq worker --serve webhooks`` POSTs
    it, the receiver's 500 brings a retry after the backoff, with the same webhook-id."""
    _, delivery_id, secret = _completed_batch(sessions, receiver.url)
    receiver.statuses = [500]
    env = {
        **os.environ,
        "RETINAQ_VAR_DIR": str(tmp_path),
        "RETINAQ_DATABASE_URL": database_url,
        "RETINAQ_BROKER_URL": redis_url,
        "RETINAQ_STORAGE_DIR": str(tmp_path / "images"),
        "RETINAQ_QUEUE_NAME": queue_name,
        "RETINAQ_HEATMAP_QUEUE_NAME": f"{queue_name}.explain",
        "RETINAQ_WEBHOOK_QUEUE_NAME": f"{queue_name}.webhooks",
        "RETINAQ_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32",
        "RETINAQ_WEBHOOK_ALLOW_HTTP": "true",
        "RETINAQ_WEBHOOK_BACKOFF_S": "1",
        "PYTHONUNBUFFERED": "1",
    }
    cli = [sys.executable, "-m", "cli"]
    commands = {
        "webhooks": (
            [*cli, "worker", "--serve", "webhooks", "--hostname", f"wh-{os.getpid()}@%h"],
            REPO_ROOT,
        ),
        "reconciler": ([*cli, "reconcile", "--interval", "0.5"], REPO_ROOT),
    }
    started = time.monotonic()
    with running_stack(commands, env, tmp_path, f"http://127.0.0.1:{receiver.port}/"):
        wait_for(lambda: len(receiver.requests) >= 2, 60, "the retried delivery")
        wait_for(lambda: _state(sessions, delivery_id) == WebhookState.DELIVERED, 10, "its log")
    assert time.monotonic() - started < 60
    assert [h["webhook-id"] for h, _ in receiver.requests] == [delivery_id, delivery_id]
    for headers, body in receiver.requests:
        assert Webhook(secret).verify(body, headers)["type"] == "batch.completed"
    log = _attempts(sessions, delivery_id)
    assert [(a.attempt, a.status_code) for a in log] == [(1, 500), (2, 204)]
    # The retry waited for its backoff (0.5 to 1 s after the first attempt ended).
    gap = log[1].started_at - log[0].started_at
    assert gap >= timedelta(seconds=0.5)


def _state(sessions: sessionmaker[Session], delivery_id: str) -> WebhookState | None:
    with sessions() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        return None if delivery is None else delivery.state


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A certificate for ``name`` that no trusted authority signed, and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = utcnow()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_https_to_the_pinned_address_names_the_host_and_verifies_its_certificate(
    webhook_settings: Settings,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Connected by IP address, the TLS handshake still names the callback's host (SNI) and
    checks the certificate against the trusted authorities: a self-signed one fails."""
    cert, key = _self_signed(tmp_path, "receiver.example")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server_names: list[str | None] = []
    context.sni_callback = lambda _socket, name, _context: server_names.append(name)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve_one() -> None:
        connection, _ = listener.accept()
        with contextlib.suppress(ssl.SSLError, OSError):
            context.wrap_socket(connection, server_side=True).close()
        connection.close()

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    real = socket.getaddrinfo

    def resolve(host: Any, port_: Any, *args: Any, **kwargs: Any) -> Any:
        return real("127.0.0.1" if host == "receiver.example" else host, port_, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    _, delivery_id, _ = _completed_batch(sessions, f"https://receiver.example:{port}/hooks")
    assert deliver(_runtime(webhook_settings, sessions), delivery_id) == "pending"
    thread.join(5)
    listener.close()
    [attempt] = _attempts(sessions, delivery_id)
    assert attempt.error_code == "connect_error"
    assert "CERTIFICATE_VERIFY_FAILED" in (attempt.error_message or "")
    assert server_names == ["receiver.example"]


def test_a_receiver_trickling_its_answer_loses_the_attempt_at_the_deadline(
    webhook_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """Each byte of the status line comes well within httpx's per-read timeout, so only a
    deadline kept by the socket itself ends the attempt (a slow-loris receiver)."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle() -> None:
        connection, _ = server.accept()
        with connection:
            connection.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\n" * 100:
                if stop.wait(0.2):
                    return
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}/hook"
    _, delivery_id, _ = _completed_batch(sessions, url)
    quick = webhook_settings.model_copy(update={"webhook_timeout_s": 1.5})
    started = time.monotonic()
    try:
        assert deliver(_runtime(quick, sessions), delivery_id) == "pending"
    finally:
        stop.set()
        server.close()
    assert time.monotonic() - started < 4, "the deadline, not the trickle, ended it"
    [attempt] = _attempts(sessions, delivery_id)
    assert (attempt.status_code, attempt.error_code) == (None, "timeout")
