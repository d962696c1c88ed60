"""The API's side of webhooks: ``callback_url`` on a new batch (checked there: https, no
internal address, a programme with a signing secret) and the delivery log at
``/v1/batches/<id>/webhooks``, which only the owning programme sees."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.test import TestResponse

from common.db.tables import Batch, Programme, WebhookAttempt, WebhookDelivery, WebhookState, utcnow
from common.lifecycle.progress import settle_batch
from common.webhooks.programmes import configure_webhook

HOOK = "https://hooks.example.org/retinaq"


def _enable(sessions: sessionmaker[Session], name: str = "North") -> None:
    with sessions.begin() as session:
        programme = session.scalars(select(Programme).where(Programme.name == name)).one()
        configure_webhook(session, programme.id)


def _open(client: FlaskClient, auth: dict[str, str], url: str) -> TestResponse:
    return client.post("/v1/batches", headers=auth, json={"open": True, "callback_url": url})


def test_a_closed_batch_keeps_its_callback_url(
    client: FlaskClient,
    auth: dict[str, str],
    sessions: sessionmaker[Session],
    fundus_jpeg: Callable[..., bytes],
) -> None:
    _enable(sessions)
    data = {"images": [(io.BytesIO(fundus_jpeg()), "a.jpg")], "callback_url": HOOK}
    response = client.post("/v1/batches", headers=auth, data=data)
    assert response.status_code == 202, response.get_json()
    with sessions() as session:
        batch = session.get(Batch, uuid.UUID(response.get_json()["id"]))
        assert batch is not None and batch.callback_url == HOOK


def test_an_open_batch_takes_a_callback_url_in_json(
    client: FlaskClient, auth: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    _enable(sessions)
    response = _open(client, auth, HOOK)
    assert response.status_code == 201, response.get_json()
    with sessions() as session:
        batch = session.get(Batch, uuid.UUID(response.get_json()["id"]))
        assert batch is not None and batch.callback_url == HOOK


def test_a_callback_url_needs_the_programme_signing_secret(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    response = _open(client, auth, HOOK)
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "webhooks_not_enabled"
    assert "retinaq admin set-webhook" in response.get_json()["error"]["message"]


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://hooks.example.org/retinaq", "https"),
        ("https://127.0.0.1/hook", "loopback"),
        ("https://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("https://[::ffff:10.0.0.1]/hook", "private"),
        ("https://100.64.0.1/hook", "carrier-grade NAT"),
        ("https://localhost/hook", "localhost"),
        ("https://user:secret@hooks.example.org/", "credentials"),
        ("not a url", "whitespace"),
        ("hooks.example.org/retinaq", "https"),
    ],
)
def test_an_unsafe_callback_url_is_refused_before_anything_is_stored(
    client: FlaskClient,
    auth: dict[str, str],
    sessions: sessionmaker[Session],
    url: str,
    why: str,
) -> None:
    _enable(sessions)
    response = _open(client, auth, url)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "invalid_callback_url" and why in error["message"]
    with sessions() as session:
        assert session.scalars(select(Batch)).all() == []


def test_the_allow_list_admits_an_internal_receiver(
    make_app: Callable[..., Flask],
    auth: dict[str, str],
    sessions: sessionmaker[Session],
) -> None:
    _enable(sessions)
    client = make_app(
        webhook_allowed_networks=("10.20.0.0/16",), webhook_allow_http=True
    ).test_client()
    ok = _open(client, auth, "http://10.20.1.5:8080/in")
    assert ok.status_code == 201, ok.get_json()
    refused = _open(client, auth, "http://10.30.1.5/in")
    assert refused.status_code == 422


def test_the_delivery_log_is_the_owning_programme_s_alone(
    client: FlaskClient,
    auth: dict[str, str],
    make_programme: Callable[[str], dict[str, str]],
    sessions: sessionmaker[Session],
) -> None:
    _enable(sessions)
    opened = client.post("/v1/batches", headers=auth, json={"open": True}).get_json()
    batch_id = uuid.UUID(opened["id"])
    with sessions.begin() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        batch.callback_url = HOOK
    closed = client.post(f"/v1/batches/{batch_id}/close", headers=auth)
    assert closed.status_code == 200 and closed.get_json()["state"] == "completed"
    with sessions.begin() as session:
        delivery = session.scalars(select(WebhookDelivery)).one()
        session.add(
            WebhookAttempt(
                id=uuid.uuid4(),
                delivery_id=delivery.id,
                attempt=1,
                started_at=utcnow(),
                duration_ms=12.5,
                status_code=500,
                error_code="http_status",
                error_message="HTTP 500",
            )
        )
        delivery.attempts = 1

    response = client.get(f"/v1/batches/{batch_id}/webhooks", headers=auth)
    assert response.status_code == 200
    body = response.get_json()
    [item] = body["items"]
    assert item["id"] == delivery.id and item["event_type"] == "batch.completed"
    assert item["url"] == HOOK and item["state"] == WebhookState.PENDING.value
    assert item["attempts"] == [
        {
            "attempt": 1,
            "started_at": item["attempts"][0]["started_at"],
            "duration_ms": 12.5,
            "status_code": 500,
            "error_code": "http_status",
            "error_message": "HTTP 500",
        }
    ]
    assert body["links"]["self"] == f"http://localhost/v1/batches/{batch_id}/webhooks"
    assert body["links"]["batch"] == f"http://localhost/v1/batches/{batch_id}"

    other = make_programme("South")
    foreign = client.get(f"/v1/batches/{batch_id}/webhooks", headers=other)
    assert foreign.status_code == 404
    assert foreign.get_json()["error"]["code"] == "not_found"
    assert client.get(f"/v1/batches/{uuid.uuid4()}/webhooks", headers=auth).status_code == 404


def test_settling_twice_records_one_completion(
    client: FlaskClient, auth: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    _enable(sessions)
    opened = client.post("/v1/batches", headers=auth, json={"open": True}).get_json()
    batch_id = uuid.UUID(opened["id"])
    with sessions.begin() as session:
        session.get(Batch, batch_id).callback_url = HOOK  # type: ignore[union-attr]
    client.post(f"/v1/batches/{batch_id}/close", headers=auth)
    with sessions.begin() as session:
        settle_batch(session, batch_id)
    with sessions() as session:
        assert len(session.scalars(select(WebhookDelivery)).all()) == 1


def test_a_request_adding_images_cannot_set_the_batchs_callback_url(
    client: FlaskClient,
    auth: dict[str, str],
    sessions: sessionmaker[Session],
    fundus_jpeg: Callable[..., bytes],
) -> None:
    _enable(sessions)
    opened = _open(client, auth, HOOK).get_json()
    data = {"images": [(io.BytesIO(fundus_jpeg()), "a.jpg")], "callback_url": HOOK}
    response = client.post(opened["links"]["add_images"], headers=auth, data=data)
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "unknown_fields"
    assert "callback_url" in response.get_json()["error"]["message"]
