"""The API's ``/metrics``: requests by URL rule, errors by code, ingest, and the queue read
from PostgreSQL, scraped and parsed as Prometheus would."""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Callable
from datetime import timedelta

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from api.queue_metrics import QueueCollector
from common.db.engine import make_engine
from common.db.tables import Image, ImageState, Programme, utcnow
from tests.scraping import Samples, parse_exposition, sample_value, summed


def _scrape(client: FlaskClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    return parse_exposition(response.get_data(as_text=True))


def _programme_id(sessions: sessionmaker[Session], name: str) -> str:
    with sessions() as session:
        return str(session.scalars(select(Programme.id).where(Programme.name == name)).one())


def test_an_upload_moves_requests_ingest_and_the_queue_by_exactly_its_numbers(
    client: FlaskClient,
    make_programme: Callable[[str], dict[str, str]],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
) -> None:
    auth = make_programme("Metrics North")
    programme = _programme_id(sessions, "Metrics North")
    before = _scrape(client)
    assert sample_value(before, "retinaq_queue_pending_images", programme_id=programme) == 0
    assert sample_value(before, "retinaq_queue_up") == 1

    images = [fundus_jpeg(seed=i) for i in range(3)]
    response = client.post(
        "/v1/batches",
        headers=auth,
        data={"images": [(io.BytesIO(b), f"m{i}.jpg") for i, b in enumerate(images)]},
    )
    assert response.status_code == 202
    batch_id = response.get_json()["id"]
    assert client.get(f"/v1/batches/{batch_id}", headers=auth).status_code == 200
    assert client.get(f"/v1/batches/{uuid.uuid4()}", headers=auth).status_code == 404
    after = _scrape(client)

    def moved(name: str, **labels: str) -> float:
        return sample_value(after, name, **labels) - sample_value(before, name, **labels)

    assert moved("retinaq_api_ingested_images_total") == 3
    assert moved("retinaq_api_ingested_bytes_total") == sum(len(b) for b in images)
    rule = "/v1/batches/<uuid:batch_id>"
    assert (
        moved(
            "retinaq_api_request_duration_seconds_count",
            route="/v1/batches",
            method="POST",
            status="202",
        )
        == 1
    )
    assert (
        moved("retinaq_api_request_duration_seconds_count", route=rule, method="GET", status="200")
        == 1
    )
    assert (
        moved("retinaq_api_request_duration_seconds_count", route=rule, method="GET", status="404")
        == 1
    )
    assert moved("retinaq_api_errors_total", status="404", code="not_found") == 1
    # No series names a batch id: the route is the rule, never the path.
    assert not any(batch_id in str(labels) for _, labels in after)

    assert sample_value(after, "retinaq_queue_pending_images", programme_id=programme) == 3
    assert sample_value(after, "retinaq_queue_queued_images", programme_id=programme) == 3
    assert (
        sample_value(
            after, "retinaq_programme_info", programme_id=programme, programme="Metrics North"
        )
        == 1
    )
    assert sample_value(after, "retinaq_queue_all_pending_images") == 3
    assert (
        sample_value(after, "retinaq_queue_oldest_pending_age_seconds", programme_id=programme) < 60
    )


def test_the_oldest_pending_age_counts_queued_and_processing_images(
    client: FlaskClient,
    make_programme: Callable[[str], dict[str, str]],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
) -> None:
    auth = make_programme("Aged")
    programme = _programme_id(sessions, "Aged")
    files = [(io.BytesIO(fundus_jpeg(seed=i)), f"a{i}.jpg") for i in range(2)]
    assert client.post("/v1/batches", headers=auth, data={"images": files}).status_code == 202
    with sessions.begin() as session:
        first, second = session.scalars(select(Image.id).order_by(Image.id)).all()
        # The first upload was an hour ago and a worker holds it; the second waits, 10 min.
        session.execute(
            update(Image)
            .where(Image.id == first)
            .values(state=ImageState.PROCESSING, created_at=utcnow() - timedelta(hours=1))
        )
        session.execute(
            update(Image)
            .where(Image.id == second)
            .values(created_at=utcnow() - timedelta(minutes=10))
        )
    samples = _scrape(client)
    assert sample_value(samples, "retinaq_queue_queued_images", programme_id=programme) == 1
    assert sample_value(samples, "retinaq_queue_processing_images", programme_id=programme) == 1
    age = sample_value(samples, "retinaq_queue_oldest_pending_age_seconds", programme_id=programme)
    assert 3600 <= age < 3660
    with sessions.begin() as session:
        session.execute(update(Image).where(Image.id == first).values(state=ImageState.GRADED))
    age = sample_value(
        _scrape(client), "retinaq_queue_oldest_pending_age_seconds", programme_id=programme
    )
    assert 600 <= age < 660


def test_errors_are_counted_by_the_code_the_api_wrote(client: FlaskClient) -> None:
    before = _scrape(client)
    assert client.get("/v1/batches").status_code == 401
    assert client.get("/no/such/path/" + "x" * 50).status_code == 404
    after = _scrape(client)
    assert (
        summed(after, "retinaq_api_errors_total", status="401")
        - summed(before, "retinaq_api_errors_total", status="401")
        == 1
    )
    codes = {dict(labels)["code"] for name, labels in after if name == "retinaq_api_errors_total"}
    assert "not_found" in codes and len(codes) >= 2
    unmatched = sample_value(
        after,
        "retinaq_api_request_duration_seconds_count",
        route="unmatched",
        method="GET",
        status="404",
    )
    assert unmatched >= 1
    assert not any("xxxxx" in str(labels) for _, labels in after)


def test_metrics_are_refused_through_the_proxy_and_when_turned_off(
    client: FlaskClient, make_app: Callable[..., Flask]
) -> None:
    proxied = client.get("/metrics", headers={"X-Forwarded-For": "203.0.113.9"})
    assert proxied.status_code == 404
    assert proxied.get_json()["error"]["code"] == "not_found"
    assert client.post("/metrics").status_code == 405
    off = make_app(api_metrics=False).test_client()
    assert off.get("/metrics").status_code == 404


def test_a_public_url_does_not_stop_prometheus_scraping_by_container_name(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app(public_url="https://retinaq.example.org", proxy_hops=1)
    client = app.test_client()
    response = client.get("/metrics", headers={"Host": "api:8000"})
    assert response.status_code == 200
    assert b"retinaq_queue_up 1.0" in response.data
    # Anything else still answers only as the public URL.
    assert client.get("/healthz", headers={"Host": "api:8000"}).status_code == 400


def test_a_database_that_does_not_answer_costs_the_queue_figures_not_the_scrape() -> None:
    dead = make_engine("postgresql+psycopg://postgres@127.0.0.1:9/none")  # nothing listens
    try:
        started = time.monotonic()
        families = {family.name: family for family in QueueCollector(dead).collect()}
    finally:
        dead.dispose()
    assert time.monotonic() - started < 10
    assert set(families) == {"retinaq_queue_up", "retinaq_queue_scrape_duration_seconds"}
    assert families["retinaq_queue_up"].samples[0].value == 0


def test_images_added_to_an_open_batch_count_once_however_often_the_request_is_replayed(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
) -> None:
    created = client.post("/v1/batches", headers=auth, json={"open": True})
    assert created.status_code == 201
    url = f"/v1/batches/{created.get_json()['id']}/images"
    images = [fundus_jpeg(seed=40 + i) for i in range(2)]
    before = _scrape(client)
    for _ in range(2):  # the second is a replay of the first
        response = client.post(
            url,
            headers={**auth, "Idempotency-Key": "add-two"},
            data={"images": [(io.BytesIO(b), f"o{i}.jpg") for i, b in enumerate(images)]},
        )
        assert response.status_code == 202
    assert response.headers.get("Idempotent-Replayed") == "true"
    after = _scrape(client)
    ingested = "retinaq_api_ingested_images_total"
    assert sample_value(after, ingested) - sample_value(before, ingested) == 2
    size = "retinaq_api_ingested_bytes_total"
    assert sample_value(after, size) - sample_value(before, size) == sum(map(len, images))
    # Opening the batch (JSON, 201) ingested nothing.
    route = "/v1/batches/<uuid:batch_id>/images"
    count = "retinaq_api_request_duration_seconds_count"
    assert (
        sample_value(after, count, route=route, method="POST", status="202")
        - sample_value(before, count, route=route, method="POST", status="202")
        == 2
    )
