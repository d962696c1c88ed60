"""An upload's X-Request-ID goes with its images: on each image row, and in the headers of
each grading task it sends, where the worker's log lines read it (tests/test_request_logs.py
follows it through real processes)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable

import redis
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.db.tables import Image
from common.queue import REQUEST_ID_HEADER


def _upload(client: FlaskClient, auth: dict[str, str], jpeg: Callable[..., bytes], **headers: str):
    files = [(io.BytesIO(jpeg(seed=i)), f"img{i}.jpg") for i in range(10)]
    return client.post("/v1/batches", headers={**auth, **headers}, data={"images": files})


def _task_headers(redis_client: redis.Redis, queue_name: str) -> list[dict]:
    return [json.loads(raw)["headers"] for raw in redis_client.lrange(queue_name, 0, -1)]


def test_the_client_s_request_id_is_kept_on_every_image_and_sent_with_every_task(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    redis_client: redis.Redis,
    queue_name: str,
) -> None:
    response = _upload(client, auth, fundus_jpeg, **{"X-Request-ID": "clinic-7/upload:42"})
    assert response.status_code == 202, response.get_json()
    assert response.headers["X-Request-ID"] == "clinic-7/upload:42"
    with sessions() as session:
        assert set(session.scalars(select(Image.request_id))) == {"clinic-7/upload:42"}
    headers = _task_headers(redis_client, queue_name)
    assert len(headers) == 2  # task_size 8: ten images, two tasks
    assert {h[REQUEST_ID_HEADER] for h in headers} == {"clinic-7/upload:42"}


def test_a_hostile_request_id_is_replaced_before_it_reaches_a_row_or_a_task(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    redis_client: redis.Redis,
    queue_name: str,
) -> None:
    response = _upload(client, auth, fundus_jpeg, **{"X-Request-ID": 'x", "level": "CRITICAL'})
    assert response.status_code == 202
    made_up = response.headers["X-Request-ID"]
    assert made_up.isalnum()
    with sessions() as session:
        assert set(session.scalars(select(Image.request_id))) == {made_up}
    assert {h[REQUEST_ID_HEADER] for h in _task_headers(redis_client, queue_name)} == {made_up}
