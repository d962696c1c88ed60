"""The audit log and request ids: who did what, traceable, without secrets or patient ids."""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from collections.abc import Callable

import pytest
from flask.testing import FlaskClient
from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.test import TestResponse

from api.v1 import batches as batches_module
from common.access.audit import record_event
from common.db.tables import AuditEvent, Programme

PATIENT_ID = "NHS-943-476-5919"


def _events(sessions: sessionmaker[Session]) -> list[AuditEvent]:
    with sessions() as session:
        return list(session.scalars(select(AuditEvent).order_by(AuditEvent.id)))


def _secret(auth: dict[str, str]) -> str:
    return auth["Authorization"].removeprefix("Bearer ")


def _submit_with_metadata(
    client: FlaskClient, auth: dict[str, str], fundus_jpeg: Callable[..., bytes], **headers: str
) -> TestResponse:
    metadata = f"filename,patient_id,laterality\na.jpg,{PATIENT_ID},L\n"
    return client.post(
        "/v1/batches",
        headers={**auth, **headers},
        data={
            "images": [
                (io.BytesIO(fundus_jpeg(seed=i)), n) for i, n in enumerate(["a.jpg", "b.jpg"])
            ],
            "metadata": (io.BytesIO(metadata.encode()), "meta.csv"),
        },
    )


def test_submission_is_audited_with_prefix_and_request_id(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
) -> None:
    response = _submit_with_metadata(client, auth, fundus_jpeg, **{"X-Request-ID": "trace-42.a"})
    assert response.status_code == 202
    assert response.headers["X-Request-ID"] == "trace-42.a"
    [event] = _events(sessions)
    with sessions() as session:
        programme_id = session.scalar(select(Programme.id))
    assert event.action == "batch.create"
    assert event.object_type == "batch"
    assert event.object_id == response.get_json()["id"]
    assert event.programme_id == programme_id
    assert event.key_prefix == _secret(auth)[:11]
    assert event.request_id == "trace-42.a"
    assert event.details == {"open": False, "image_count": 2}
    assert event.created_at is not None
    stored = json.dumps(event.details)
    assert PATIENT_ID not in stored
    assert _secret(auth) not in stored


def test_open_batch_lifecycle_and_reads_are_audited(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
) -> None:
    batch = client.post("/v1/batches", headers=auth, json={"open": True}).get_json()
    files = [(io.BytesIO(fundus_jpeg(seed=i)), f"e{i}.jpg") for i in range(3)]
    client.post(batch["links"]["add_images"], headers=auth, data={"images": files})
    client.post(batch["links"]["close"], headers=auth)
    # Status polls stay read-only (they are frequent and carry only counts): not audited.
    client.get(batch["links"]["self"], headers=auth)
    rows = client.get(batch["links"]["results"], headers=auth).get_json()["items"]
    client.get(batch["links"]["images"], headers=auth)
    client.get(rows[0]["links"]["image"], headers=auth)

    events = _events(sessions)
    assert [(e.action, e.object_type, e.details) for e in events] == [
        ("batch.create", "batch", {"open": True, "image_count": 0}),
        ("batch.add_images", "batch", {"added": 3}),
        ("batch.close", "batch", {"closed_now": True, "state": "queued", "image_count": 3}),
        ("results.read", "batch", {"items": 3}),
        ("images.read", "batch", {"items": 3}),
        ("results.read", "image", {"batch_id": batch["id"], "items": 1}),
    ]
    assert {e.object_id for e in events[:-1]} == {batch["id"]}
    assert events[-1].object_id == rows[0]["image_id"]
    request_ids = [e.request_id for e in events]
    assert all(request_ids) and len(set(request_ids)) == len(events)
    assert {e.key_prefix for e in events} == {_secret(auth)[:11]}


def test_failed_and_foreign_reads_are_not_audited(
    client: FlaskClient,
    make_programme: Callable[[str], dict[str, str]],
    sessions: sessionmaker[Session],
) -> None:
    north = make_programme("North")
    south = make_programme("South")
    batch = client.post("/v1/batches", headers=north, json={"open": True}).get_json()
    assert client.get(batch["links"]["self"], headers=south).status_code == 404
    assert client.get(f"/v1/batches/{uuid.uuid4()}", headers=north).status_code == 404
    assert [e.action for e in _events(sessions)] == ["batch.create"]


def test_request_ids_are_generated_when_missing_or_unacceptable(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    generated = client.get("/v1/batches", headers=auth).headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert client.get("/v1/batches", headers=auth).headers["X-Request-ID"] != generated
    for hostile in ("a" * 65, "has space", "line\\nbreak", "-leading-dash"):
        echoed = client.get("/v1/batches", headers={**auth, "X-Request-ID": hostile})
        assert re.fullmatch(r"[0-9a-f]{32}", echoed.headers["X-Request-ID"]), hostile
    longest = "r" * 64
    assert (
        client.get("/v1/batches", headers={**auth, "X-Request-ID": longest}).headers["X-Request-ID"]
        == longest
    )


def test_request_id_is_echoed_on_errors_and_health(client: FlaskClient) -> None:
    unauthorised = client.get("/v1/batches", headers={"X-Request-ID": "edge-1"})
    assert unauthorised.status_code == 401
    assert unauthorised.headers["X-Request-ID"] == "edge-1"
    assert client.get("/healthz", headers={"X-Request-ID": "lb-7"}).headers["X-Request-ID"] == (
        "lb-7"
    )


def test_nothing_secret_reaches_the_logs(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    batch_id = _submit_with_metadata(client, auth, fundus_jpeg).get_json()["id"]
    client.get(f"/v1/batches/{batch_id}/results", headers=auth)
    client.get("/v1/batches", headers={"Authorization": "Bearer rq_not-a-real-key"})
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert _secret(auth) not in logged
    assert "rq_not-a-real-key" not in logged
    assert PATIENT_ID not in logged


def test_audit_events_are_append_only_on_postgresql(
    client: FlaskClient, auth: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    client.post("/v1/batches", headers=auth, json={"open": True})
    assert len(_events(sessions)) == 1
    for statement in (
        update(AuditEvent).values(action="tampered"),
        delete(AuditEvent),
        text("UPDATE audit_events SET details = '{}'"),
    ):
        with sessions() as session, pytest.raises(DBAPIError, match="append-only"):
            session.execute(statement)
            session.commit()
    [event] = _events(sessions)
    assert event.action == "batch.create"


@pytest.mark.parametrize("name", ["patient_id", "api_key", "Secret", "authorization", "key"])
def test_record_event_refuses_sensitive_details(sessions: sessionmaker[Session], name: str) -> None:
    with sessions() as session, pytest.raises(ValueError, match="must not contain"):
        record_event(
            session,
            programme_id=None,
            key_prefix=None,
            action="batch.create",
            object_type="batch",
            object_id=None,
            request_id=None,
            details={name: "x"},
        )


def test_an_unexpected_error_is_logged_with_the_request_id(
    client: FlaskClient,
    auth: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken_scope() -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(batches_module, "scope", broken_scope)
    response = client.get(f"/v1/batches/{uuid.uuid4()}", headers={**auth, "X-Request-ID": "t-500"})
    assert response.status_code == 500
    assert response.get_json()["error"]["code"] == "internal_error"
    assert response.headers["X-Request-ID"] == "t-500"
    assert "unhandled error in request t-500" in caplog.text
