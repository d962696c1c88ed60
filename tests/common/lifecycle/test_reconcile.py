"""The reconciler finds work the broker lost, against real PostgreSQL and Redis (and the
folder broker): stale sends, expired leases, lost heat maps, and a broker that lost its data.

Every test but those about the broker's marker starts on a broker that kept its marker, as
a broker does between wipes; those tests take the marker away as a wipe would.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from common.db.tables import Batch, BatchState, IdempotencyKey, Image, ImageState, Result, utcnow
from common.lifecycle import reconcile
from common.lifecycle.broker_marker import MARKER_KEY_PREFIX
from common.lifecycle.reconcile import BrokerResend, reconcile_once
from common.queue import make_celery
from common.settings import Settings
from tests.support import free_port
from worker.grading.heatmaps import make_heatmaps
from worker.grading.pipeline import grade_images
from worker.runtime import WorkerRuntime


@pytest.fixture
def marker_key(settings: Settings) -> str:
    """The key the reconciler keeps in the test broker for the test queue."""
    return f"{MARKER_KEY_PREFIX}{settings.queue_name}"


@pytest.fixture(autouse=True)
def _kept_marker(redis_client: redis.Redis, marker_key: str) -> Iterator[None]:
    """A broker that kept its data since the reconciler's last look; removed afterwards."""
    redis_client.set(marker_key, BrokerResend(epoch="kept", done=True).dumps())
    yield
    redis_client.delete(marker_key)


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
    # The tasks are lost but the broker kept its marker (an append-only file's last second):
    # only the stale send and the expired lease come back.
    redis_client.delete(settings.queue_name)
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


def _wipe(redis_client: redis.Redis, settings: Settings, marker_key: str) -> None:
    """What FLUSHDB does to this test's keys (the shared Redis holds other runs' too)."""
    redis_client.delete(settings.queue_name, settings.heatmap_queue_name, marker_key)


def _resent(queued_tasks: Callable[[], list[list[str]]]) -> list[str]:
    return sorted(i for task in queued_tasks() for i in task)


def test_a_broker_that_lost_its_data_gets_every_queued_image_at_once(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    settings: Settings,
    redis_client: redis.Redis,
    marker_key: str,
    queued_tasks: Callable[[], list[list[str]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Sent a moment ago, so not stale by ``enqueued_at``: the missing marker alone says the
    tasks are gone, and the first pass re-sends them all, with a WARNING."""
    ids = _submit(client, auth, fundus_jpeg, 3)
    celery = make_celery(settings)
    assert reconcile_once(sessions, celery, settings).requeued == 0, "the broker kept them"
    _wipe(redis_client, settings, marker_key)
    caplog.set_level(logging.INFO, logger="common.lifecycle.reconcile")

    report = reconcile_once(sessions, celery, settings)

    assert (report.requeued, report.after_broker_loss) == (3, True)
    assert _resent(queued_tasks) == sorted(str(i) for i in ids)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "lost its queue" in warnings[0].getMessage()
    marker = BrokerResend.loads(redis_client.get(marker_key).decode())
    assert marker.done and marker.epoch in warnings[0].getMessage()
    again = reconcile_once(sessions, celery, settings)
    assert (again.requeued, again.after_broker_loss) == (0, False), "re-sent once, not twice"
    assert len(queued_tasks()) == 1


def test_a_large_queue_is_re_sent_over_consecutive_passes(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    settings: Settings,
    redis_client: redis.Redis,
    marker_key: str,
    queued_tasks: Callable[[], list[list[str]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SCAN_LIMIT images a pass, with no wait between passes; where the re-send stopped is
    kept in the broker, so a new reconciler process carries on, and a second wipe starts it
    over."""
    monkeypatch.setattr(reconcile, "SCAN_LIMIT", 2)
    ids = sorted(_submit(client, auth, fundus_jpeg, 5))
    _wipe(redis_client, settings, marker_key)

    first = reconcile_once(sessions, make_celery(settings), settings)
    assert (first.requeued, first.after_broker_loss) == (2, True)
    assert _resent(queued_tasks) == sorted(str(i) for i in ids[:2])
    marker = json.loads(redis_client.get(marker_key))
    assert (marker["after"], marker["done"]) == (str(ids[1]), False)

    # A second wipe before the re-send finished: it starts over from the first image.
    _wipe(redis_client, settings, marker_key)
    restarted = reconcile_once(sessions, make_celery(settings), settings)
    assert _resent(queued_tasks) == sorted(str(i) for i in ids[:2])
    assert restarted.requeued == 2

    # Each pass below is a fresh Celery app, as after a reconciler restart.
    assert reconcile_once(sessions, make_celery(settings), settings).requeued == 2
    last = reconcile_once(sessions, make_celery(settings), settings)
    assert (last.requeued, last.after_broker_loss) == (1, True)
    assert _resent(queued_tasks) == sorted(str(i) for i in ids)
    assert json.loads(redis_client.get(marker_key))["done"] is True
    assert reconcile_once(sessions, make_celery(settings), settings).requeued == 0


def test_only_the_reconciler_writes_the_marker(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    settings: Settings,
    redis_client: redis.Redis,
    marker_key: str,
    runtime: WorkerRuntime,
) -> None:
    """Uploads, grading and heat maps after a wipe leave the marker missing: nothing but the
    reconciler's next look can put it back, so nothing hides the wipe from it."""
    _wipe(redis_client, settings, marker_key)
    ids = _submit(client, auth, fundus_jpeg, 2)
    grade_images(runtime, ids)
    make_heatmaps(runtime, ids)
    assert redis_client.exists(marker_key) == 0
    assert reconcile_once(sessions, make_celery(settings), settings).after_broker_loss
    assert redis_client.exists(marker_key) == 1


def test_a_marker_it_cannot_read_is_never_taken_for_a_wipe(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    settings: Settings,
    redis_client: redis.Redis,
    marker_key: str,
) -> None:
    _submit(client, auth, fundus_jpeg, 1)
    redis_client.set(marker_key, "written by an older reconciler")
    report = reconcile_once(sessions, make_celery(settings), settings)
    assert (report.requeued, report.after_broker_loss) == (0, False)
    assert redis_client.get(marker_key) == b"written by an older reconciler"


def test_the_folder_broker_keeps_its_marker_beside_its_queue(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    settings: Settings,
    tmp_path: Path,
) -> None:
    """The embedded profile's broker: a deleted broker folder is its wipe."""
    _submit(client, auth, fundus_jpeg, 2)
    folder = tmp_path / "broker"
    embedded = settings.model_copy(update={"broker_url": f"filesystem://{folder}"})

    def messages() -> int:
        return len(list((folder / "queue").glob("*.msg")))

    first = reconcile_once(sessions, make_celery(embedded), embedded)
    assert (first.requeued, first.after_broker_loss) == (2, True), "a new broker"
    assert messages() == 1
    marker = folder / f"reconciler-marker.{settings.queue_name}"
    assert BrokerResend.loads(marker.read_text()).done
    assert reconcile_once(sessions, make_celery(embedded), embedded).requeued == 0

    shutil.rmtree(folder)
    wiped = reconcile_once(sessions, make_celery(embedded), embedded)
    assert (wiped.requeued, wiped.after_broker_loss) == (2, True)
    assert messages() == 1 and marker.is_file()
