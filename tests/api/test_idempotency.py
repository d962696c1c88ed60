"""``Idempotency-Key`` on POSTs: replays, conflicts, expiry and release after failure."""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from api.hooks.idempotency import request_fingerprint
from api.v1 import batches as batches_module
from common.db.tables import AuditEvent, Batch, IdempotencyKey, Image, Programme, utcnow
from common.settings import Settings


def _files(fundus_jpeg: Callable[..., bytes], count: int, prefix: str = "img") -> list:
    return [(io.BytesIO(fundus_jpeg(seed=i)), f"{prefix}{i}.jpg") for i in range(count)]


def _count(sessions: sessionmaker[Session], model: Any) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def _keyed(auth: dict[str, str], key: str) -> dict[str, str]:
    return {**auth, "Idempotency-Key": key}


def test_retried_open_batch_creation_returns_the_original_and_creates_nothing(
    client: FlaskClient, auth: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    headers = _keyed(auth, "create-open-1")
    body = {"open": True, "reference": "van-9"}
    first = client.post("/v1/batches", headers=headers, json=body)
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    retry = client.post("/v1/batches", headers=headers, json=body)
    assert retry.status_code == 201
    assert retry.get_json() == first.get_json()
    assert retry.headers["Location"] == first.headers["Location"]
    assert retry.headers["Content-Type"] == "application/json"
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert retry.headers["X-Request-ID"] != first.headers["X-Request-ID"]
    assert _count(sessions, Batch) == 1
    with sessions() as session:
        assert session.scalars(select(AuditEvent.action)).all() == ["batch.create"]
        row = session.scalars(select(IdempotencyKey)).one()
    assert row.status_code == 201
    assert row.response_body == first.get_json()
    assert row.response_headers["Location"] == first.headers["Location"]
    assert "X-Request-ID" not in row.response_headers


def test_retried_multipart_submission_is_not_stored_or_enqueued_twice(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    settings: Settings,
    redis_client: redis.Redis,
) -> None:
    headers = _keyed(auth, "multipart-1")
    responses = [
        # The test client draws a new multipart boundary each time, as a real retry would.
        client.post(
            "/v1/batches",
            headers=headers,
            data={"images": _files(fundus_jpeg, 3), "reference": "clinic-2"},
        )
        for _ in range(2)
    ]
    assert [r.status_code for r in responses] == [202, 202]
    assert responses[1].get_json() == responses[0].get_json()
    assert responses[1].headers["Location"] == responses[0].headers["Location"]
    assert _count(sessions, Batch) == 1
    assert _count(sessions, Image) == 3
    queued = redis_client.lrange(settings.queue_name, 0, -1)
    assert len(queued) == 1
    assert list((settings.image_store / "tmp").iterdir()) == []


def test_add_images_and_close_replay_too(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
) -> None:
    batch = client.post("/v1/batches", headers=auth, json={"open": True}).get_json()
    add_headers = _keyed(auth, "add-1")
    added = [
        client.post(
            batch["links"]["add_images"],
            headers=add_headers,
            data={"images": _files(fundus_jpeg, 2)},
        )
        for _ in range(2)
    ]
    assert [a.status_code for a in added] == [202, 202]
    assert added[1].get_json() == added[0].get_json()
    assert added[1].get_json()["added"] == 2
    assert _count(sessions, Image) == 2

    close_headers = _keyed(auth, "close-1")
    closed = [client.post(batch["links"]["close"], headers=close_headers) for _ in range(2)]
    assert [c.status_code for c in closed] == [200, 200]
    assert closed[1].get_json() == closed[0].get_json()
    assert closed[1].headers["Idempotent-Replayed"] == "true"
    with sessions() as session:
        actions = session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
    assert actions == ["batch.create", "batch.add_images", "batch.close"]


def test_requests_without_a_key_are_not_deduplicated(
    client: FlaskClient, auth: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    for _ in range(2):
        assert client.post("/v1/batches", headers=auth, json={"open": True}).status_code == 201
    assert _count(sessions, Batch) == 2
    assert _count(sessions, IdempotencyKey) == 0


@pytest.mark.parametrize(
    "second",
    [
        {"path": "/v1/batches", "json": {"open": True, "reference": "other"}},
        {"path": "/v1/batches", "data": b'{"open": true}', "content_type": "text/plain"},
        {"path": "/v1/batches?x=1", "json": {"open": True}},
    ],
    ids=["different-body", "different-media-type", "different-query"],
)
def test_same_key_with_a_different_request_is_422(
    client: FlaskClient, auth: dict[str, str], sessions: sessionmaker[Session], second: dict
) -> None:
    headers = _keyed(auth, "reused")
    assert client.post("/v1/batches", headers=headers, json={"open": True}).status_code == 201
    path = second.pop("path")
    response = client.post(path, headers=headers, **second)
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "idempotency_key_reused"
    assert _count(sessions, Batch) == 1


def test_same_key_on_another_endpoint_is_422(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
) -> None:
    batch = client.post("/v1/batches", headers=auth, json={"open": True}).get_json()
    headers = _keyed(auth, "one-key")
    assert client.post(batch["links"]["close"], headers=headers).status_code == 200
    other = client.post("/v1/batches", headers=headers, json={"open": True})
    assert other.status_code == 422
    assert other.get_json()["error"]["code"] == "idempotency_key_reused"
    changed_files = client.post(
        "/v1/batches", headers=_keyed(auth, "files"), data={"images": _files(fundus_jpeg, 1)}
    )
    assert changed_files.status_code == 202
    renamed = client.post(
        "/v1/batches",
        headers=_keyed(auth, "files"),
        data={"images": [(io.BytesIO(fundus_jpeg(seed=0)), "renamed.jpg")]},
    )
    assert renamed.status_code == 422
    assert _count(sessions, Image) == 1


def test_concurrent_duplicate_is_409_while_the_first_is_in_progress(
    client: FlaskClient, auth: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    headers = _keyed(auth, "busy")
    body = {"open": True}
    with sessions.begin() as session:
        programme_id = session.scalar(select(Programme.id))
    with client.application.test_request_context(
        "/v1/batches", method="POST", json=body, headers=headers
    ) as context:
        fingerprint = request_fingerprint(context.request)
    with sessions.begin() as session:
        session.add(
            IdempotencyKey(
                programme_id=programme_id,
                key="busy",
                request_fingerprint=fingerprint,
                status_code=None,
                expires_at=utcnow() + timedelta(hours=1),
            )
        )
    response = client.post("/v1/batches", headers=headers, json=body)
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "idempotency_key_in_progress"
    assert int(response.headers["Retry-After"]) >= 1
    assert _count(sessions, Batch) == 0
    # The other request's reservation is left alone.
    assert _count(sessions, IdempotencyKey) == 1


def test_the_key_is_reserved_and_committed_before_the_work_starts(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[str, int | None]] = []
    real_record_images = batches_module.record_images

    def spying_record_images(*args: Any, **kwargs: Any) -> Any:
        with sessions() as other:
            seen.extend(other.execute(select(IdempotencyKey.key, IdempotencyKey.status_code)))
        return real_record_images(*args, **kwargs)

    monkeypatch.setattr(batches_module, "record_images", spying_record_images)
    response = client.post(
        "/v1/batches", headers=_keyed(auth, "early"), data={"images": _files(fundus_jpeg, 1)}
    )
    assert response.status_code == 202
    assert seen == [("early", None)]
    with sessions() as session:
        assert session.scalar(select(IdempotencyKey.status_code)) == 202


def test_an_expired_key_is_replaced(
    client: FlaskClient, auth: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    headers = _keyed(auth, "old")
    first = client.post("/v1/batches", headers=headers, json={"open": True, "reference": "a"})
    assert first.status_code == 201
    with sessions.begin() as session:
        session.execute(update(IdempotencyKey).values(expires_at=utcnow() - timedelta(seconds=1)))
    # A different request would be 422 while the key lived; once expired it is a new key.
    second = client.post("/v1/batches", headers=headers, json={"open": True, "reference": "b"})
    assert second.status_code == 201
    assert second.get_json()["id"] != first.get_json()["id"]
    assert "Idempotent-Replayed" not in second.headers
    assert _count(sessions, Batch) == 2
    with sessions() as session:
        row = session.scalars(select(IdempotencyKey)).one()
    assert row.response_body == second.get_json()
    assert row.expires_at > utcnow() + timedelta(hours=23)


def test_a_reservation_abandoned_by_a_dead_request_is_replaced(
    client: FlaskClient,
    auth: dict[str, str],
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    """A process killed mid-request leaves an in-progress row; it must not block for a day."""
    body = {"open": True, "reference": "after-crash"}
    with sessions() as session:
        programme_id = session.scalar(select(Programme.id))
    with sessions.begin() as session:
        session.add(
            IdempotencyKey(
                programme_id=programme_id,
                key="crashed",
                request_fingerprint="0" * 64,
                status_code=None,
                created_at=utcnow() - timedelta(seconds=settings.idempotency_abandoned_after_s + 1),
                expires_at=utcnow() + timedelta(hours=1),
            )
        )
    response = client.post("/v1/batches", headers=_keyed(auth, "crashed"), json=body)
    assert response.status_code == 201
    assert _count(sessions, Batch) == 1


def test_the_key_expires_after_the_configured_ttl(
    make_app: Callable[..., Any], auth: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    client = make_app(idempotency_ttl_s=600).test_client()
    before = utcnow()
    client.post("/v1/batches", headers=_keyed(auth, "ttl"), json={"open": True})
    with sessions() as session:
        row = session.scalars(select(IdempotencyKey)).one()
    assert before + timedelta(seconds=600) <= row.expires_at <= utcnow() + timedelta(seconds=600)


def test_a_failed_first_request_releases_the_key_for_a_retry(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        session.execute(update(Programme).values(max_pending_images=2))
    waiting = client.post("/v1/batches", headers=auth, data={"images": _files(fundus_jpeg, 1, "w")})
    assert waiting.status_code == 202
    headers = _keyed(auth, "retry-after-429")
    refused = client.post("/v1/batches", headers=headers, data={"images": _files(fundus_jpeg, 2)})
    assert refused.status_code == 429
    assert _count(sessions, IdempotencyKey) == 0
    with sessions.begin() as session:
        session.execute(update(Programme).values(max_pending_images=None))
    accepted = client.post("/v1/batches", headers=headers, data={"images": _files(fundus_jpeg, 2)})
    assert accepted.status_code == 202
    assert "Idempotent-Replayed" not in accepted.headers
    assert _count(sessions, Image) == 3

    bad = client.post("/v1/batches", headers=_keyed(auth, "bad"), json={"reference": "x"})
    assert bad.status_code == 422
    assert _count(sessions, IdempotencyKey) == 1


def test_keys_are_scoped_per_programme(
    client: FlaskClient,
    make_programme: Callable[[str], dict[str, str]],
    sessions: sessionmaker[Session],
) -> None:
    north = make_programme("North")
    south = make_programme("South")
    body = {"open": True, "reference": "same"}
    a = client.post("/v1/batches", headers=_keyed(north, "shared"), json=body)
    b = client.post("/v1/batches", headers=_keyed(south, "shared"), json=body)
    assert a.status_code == b.status_code == 201
    assert a.get_json()["id"] != b.get_json()["id"]
    assert "Idempotent-Replayed" not in b.headers
    assert _count(sessions, IdempotencyKey) == 2


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "caf\u00e9"])
def test_invalid_keys_are_400(
    client: FlaskClient, auth: dict[str, str], sessions: sessionmaker[Session], key: str
) -> None:
    response = client.post("/v1/batches", headers=_keyed(auth, key), json={"open": True})
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_idempotency_key"
    assert _count(sessions, Batch) == 0


def test_longest_valid_key_is_accepted(client: FlaskClient, auth: dict[str, str]) -> None:
    key = "k" * 254 + "~"
    headers = _keyed(auth, key)
    first = client.post("/v1/batches", headers=headers, json={"open": True})
    again = client.post("/v1/batches", headers=headers, json={"open": True})
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"


def test_the_header_is_ignored_on_reads(client: FlaskClient, auth: dict[str, str]) -> None:
    response = client.get("/v1/batches", headers=_keyed(auth, "x" * 300))
    assert response.status_code == 200
    assert uuid.UUID(response.headers["X-Request-ID"])


def test_a_real_concurrent_duplicate_gets_409_then_the_replay(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two threads, one key: the second arrives while the first is inside the view."""
    inside, release = threading.Event(), threading.Event()
    real_record_images = batches_module.record_images

    def slow_record_images(*args: Any, **kwargs: Any) -> Any:
        inside.set()
        assert release.wait(timeout=30)
        return real_record_images(*args, **kwargs)

    monkeypatch.setattr(batches_module, "record_images", slow_record_images)
    headers = _keyed(auth, "race")
    results: dict[str, Any] = {}

    def first() -> None:
        response = client.application.test_client().post(
            "/v1/batches", headers=headers, data={"images": _files(fundus_jpeg, 2)}
        )
        results["first"] = (response.status_code, response.get_json())

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert inside.wait(timeout=30)
        duplicate = client.post(
            "/v1/batches", headers=headers, data={"images": _files(fundus_jpeg, 2)}
        )
    finally:
        release.set()
        thread.join(timeout=30)
    assert duplicate.status_code == 409
    assert duplicate.get_json()["error"]["code"] == "idempotency_key_in_progress"
    assert results["first"][0] == 202
    replay = client.post("/v1/batches", headers=headers, data={"images": _files(fundus_jpeg, 2)})
    assert replay.status_code == 202
    assert replay.get_json() == results["first"][1]
    assert _count(sessions, Image) == 2
