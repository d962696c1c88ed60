"""The reconciler finds work the broker lost, against real PostgreSQL and Redis."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from datetime import timedelta

import redis
from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from common.db.tables import Batch, BatchState, IdempotencyKey, Image, ImageState, Result, utcnow
from common.lifecycle.reconcile import reconcile_once
from common.queue import make_celery
from common.settings import Settings
from tests.support import free_port
from worker.grading.heatmaps import make_heatmaps
from worker.grading.pipeline import grade_images
from worker.runtime import WorkerRuntime


def _submit(client: FlaskClient, auth: dict[str, str], jpeg: Callable, n: int) -> list[uuid.UUID]:
    files = [(io.BytesIO(jpeg(seed=i)), f"{i}.jpg") for i in range(n)]
    batch = client.post("/v1/batches", headers=auth, data={"images": files}).get_json()
    rows = client.get(batch["links"]["results"], headers=auth).get_json()["items"]
    return [uuid.UUID(r["image_id"]) for r in rows]


def test_reconciler_resends_lost_work_and_fails_exhausted_images(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    settings: Settings,
    redis_client: redis.Redis,
    queued_tasks: Callable[[], list[list[str]]],
) -> None:
    fresh, stale, expired, leased, exhausted = _submit(client, auth, fundus_jpeg, 5)
    redis_client.delete(settings.queue_name)  # as if Redis restarted empty
    long_ago = utcnow() - timedelta(seconds=settings.requeue_after_s + 5)
    now = utcnow()
    with sessions.begin() as session:
        session.execute(update(Image).where(Image.id == stale).values(enqueued_at=long_ago))
        session.execute(
            update(Image)
            .where(Image.id == expired)
            .values(state=ImageState.PROCESSING, attempts=1, lease_expires_at=now)
        )
        session.execute(
            update(Image)
            .where(Image.id == leased)
            .values(
                state=ImageState.PROCESSING,
                attempts=1,
                lease_expires_at=now + timedelta(minutes=5),
            )
        )
        session.execute(
            update(Image)
            .where(Image.id == exhausted)
            .values(
                state=ImageState.PROCESSING,
                attempts=settings.max_attempts,
                lease_expires_at=now - timedelta(seconds=1),
            )
        )

    celery = make_celery(settings)
    report = reconcile_once(sessions, celery, settings)
    assert (report.requeued, report.lease_expired, report.exhausted) == (2, 1, 1)
    assert sorted(i for task in queued_tasks() for i in task) == sorted([str(stale), str(expired)])
    with sessions() as session:
        states = dict(session.execute(select(Image.id, Image.state)).all())
        exhausted_row = session.get_one(Image, exhausted)
        batch_state = session.scalar(select(Batch.state))
    assert states[fresh] == ImageState.QUEUED
    assert states[stale] == ImageState.QUEUED
    assert states[expired] == ImageState.QUEUED
    assert states[leased] == ImageState.PROCESSING
    assert exhausted_row.state == ImageState.FAILED
    assert exhausted_row.error_code == "too_many_attempts"
    assert batch_state == BatchState.PROCESSING

    again = reconcile_once(sessions, celery, settings)
    assert (again.requeued, again.exhausted) == (0, 0), "re-sent work is not re-sent at once"


def test_an_image_committed_but_never_enqueued_is_found(
    make_app: Callable,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    settings: Settings,
    redis_client: redis.Redis,
    queued_tasks: Callable[[], list[list[str]]],
) -> None:
    """The broker is down when the API commits: 202 all the same, and the reconciler sends it."""
    app = make_app(broker_url=f"redis://127.0.0.1:{free_port()}/0")
    response = app.test_client().post(
        "/v1/batches",
        headers=auth,
        data={"images": [(io.BytesIO(fundus_jpeg(seed=5)), "a.jpg")]},
    )
    assert response.status_code == 202
    assert redis_client.llen(settings.queue_name) == 0
    with sessions.begin() as session:
        image_id = session.scalars(select(Image.id)).one()
        session.execute(
            update(Image).values(enqueued_at=utcnow() - timedelta(seconds=settings.requeue_after_s))
        )
    report = reconcile_once(sessions, make_celery(settings), settings)
    assert report.requeued == 1
    assert queued_tasks() == [[str(image_id)]]


def test_reconciler_drops_expired_idempotency_keys(
    client: FlaskClient,
    auth: dict[str, str],
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    for key in ("old", "new"):
        client.post("/v1/batches", headers={**auth, "Idempotency-Key": key}, json={"open": True})
    with sessions.begin() as session:
        session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.key == "old")
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    reconcile_once(sessions, make_celery(settings), settings)
    with sessions() as session:
        assert session.scalars(select(IdempotencyKey.key)).all() == ["new"]


def test_reconciler_settles_a_batch_a_worker_left_unsettled(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    """A worker killed between committing results and settling leaves the batch behind."""
    (image_id,) = _submit(client, auth, fundus_jpeg, 1)
    with sessions.begin() as session:
        session.execute(update(Image).where(Image.id == image_id).values(state=ImageState.FAILED))
        session.execute(update(Batch).values(state=BatchState.PROCESSING))
    reconcile_once(sessions, make_celery(settings), settings)
    with sessions() as session:
        batch = session.scalars(select(Batch)).one()
    assert batch.state == BatchState.COMPLETED_WITH_ERRORS
    assert batch.completed_at is not None


def test_a_lost_heat_map_task_is_asked_for_again_once_per_interval(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    settings: Settings,
    redis_client: redis.Redis,
    runtime: WorkerRuntime,
) -> None:
    files = [(io.BytesIO(fundus_jpeg(grade=4, seed=5)), "refer.jpg")]
    files.append((io.BytesIO(fundus_jpeg(grade=0, seed=6)), "healthy.jpg"))
    batch = client.post("/v1/batches", headers=auth, data={"images": files}).get_json()
    rows = client.get(batch["links"]["results"], headers=auth).get_json()["items"]
    ids = {r["filename"]: uuid.UUID(r["image_id"]) for r in rows}
    grade_images(runtime, list(ids.values()))
    assert redis_client.llen(settings.heatmap_queue_name) == 1
    redis_client.delete(settings.heatmap_queue_name)  # the heat-map task is lost
    celery = make_celery(settings, name="test-reconciler")

    assert reconcile_once(sessions, celery, settings).heatmaps_requested == 0, "not yet stale"
    long_ago = utcnow() - timedelta(seconds=settings.requeue_after_s + 5)
    with sessions.begin() as session:
        session.execute(
            update(Result)
            .where(Result.heatmap_requested_at.is_not(None))
            .values(heatmap_requested_at=long_ago)
        )
    assert reconcile_once(sessions, celery, settings).heatmaps_requested == 1
    assert reconcile_once(sessions, celery, settings).heatmaps_requested == 0, "once a pass"
    (message,) = redis_client.lrange(settings.heatmap_queue_name, 0, -1)
    assert str(ids["refer.jpg"]) in message.decode()

    assert make_heatmaps(runtime, [ids["refer.jpg"]]) == 1
    with sessions.begin() as session:
        session.execute(
            update(Result)
            .where(Result.image_id == ids["refer.jpg"])
            .values(heatmap_requested_at=long_ago)
        )
    assert reconcile_once(sessions, celery, settings).heatmaps_requested == 0, "made: done"
