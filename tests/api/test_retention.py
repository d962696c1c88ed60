"""Cancelling and purging batches: over HTTP, in ``common.lifecycle.retention``, and from
the admin CLI, on both stores (a folder, and a bucket on a real S3 server)."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from cli.main import cli
from common.db.tables import AuditEvent, Batch, Image, Result, utcnow
from common.lifecycle.claims import claim_images
from common.lifecycle.retention import purge_batch
from common.settings import Settings
from common.storage import ObjectStore
from tests.support import STORES
from worker.grading.heatmaps import make_heatmaps
from worker.grading.pipeline import grade_claimed, grade_images
from worker.runtime import WorkerRuntime

Submitted = tuple[dict[str, Any], list[uuid.UUID]]


pytestmark = pytest.mark.parametrize("storage", STORES, indirect=True)


def _file_of(sessions: sessionmaker[Session], image_id: uuid.UUID) -> str:
    """The image's key in the store."""
    with sessions() as session:
        return session.get_one(Image, image_id).storage_path


def _is_stored(store: ObjectStore, key: str) -> bool:
    return store.exists(key.rsplit("/", 1)[-1])


def _count(sessions: sessionmaker[Session], model: type, *where: Any) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def _deletion_events(sessions: sessionmaker[Session]) -> list[AuditEvent]:
    with sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == "batch.delete")))


def test_delete_cancels_pending_images_and_keeps_graded_results(
    client: FlaskClient,
    auth: dict[str, str],
    submit: Callable[..., Submitted],
    runtime: WorkerRuntime,
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    store: ObjectStore,
) -> None:
    batch, ids = submit([(fundus_jpeg(seed=i), f"{i}.jpg") for i in range(3)])
    assert grade_images(runtime, ids[:1]).graded == 1

    response = client.delete(
        batch["links"]["self"], headers={**auth, "X-Request-ID": "cancel-clinic-7"}
    )
    assert response.status_code == 200
    body = response.get_json()
    assert (body["id"], body["state"], body["image_count"]) == (batch["id"], "cancelled", 3)
    assert body["closed_at"] is not None and body["completed_at"] is not None
    assert set(body["links"]) == {"self", "results", "images", "patients"}

    polled = client.get(batch["links"]["self"], headers=auth)
    assert "Retry-After" not in polled.headers, "a cancelled batch is finished: stop polling"
    status = polled.get_json()
    assert status["state"] == "cancelled"
    assert status["counts"] == {
        "queued": 0,
        "processing": 0,
        "graded": 1,
        "ungradable": 0,
        "failed": 0,
        "cancelled": 2,
    }
    assert sum(status["grades"].values()) == 1
    rows = client.get(batch["links"]["results"], headers=auth).get_json()["items"]
    assert rows[0]["state"] == "graded" and 0 <= rows[0]["grade"] <= 4
    for row in rows[1:]:
        assert (row["state"], row["grade"], row["error"]) == ("cancelled", None, None)

    assert grade_images(runtime, ids).claimed == 0, "a cancelled image is never claimed"
    assert all(_is_stored(store, _file_of(sessions, i)) for i in ids)
    (audit,) = _deletion_events(sessions)
    assert (audit.object_type, audit.object_id) == ("batch", batch["id"])
    assert audit.details == {"purge": False, "state": "processing", "images_cancelled": 2}
    assert audit.key_prefix == auth["Authorization"].removeprefix("Bearer ")[:11]
    assert audit.request_id == "cancel-clinic-7"

    again = client.delete(batch["links"]["self"], headers=auth)
    assert again.status_code == 200
    assert again.get_json()["completed_at"] == body["completed_at"]


def test_delete_fences_out_a_worker_that_already_claimed_the_image(
    client: FlaskClient,
    auth: dict[str, str],
    submit: Callable[..., Submitted],
    runtime: WorkerRuntime,
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
) -> None:
    batch, ids = submit([(fundus_jpeg(seed=5), "5.jpg")])
    with sessions.begin() as session:
        claims = claim_images(
            session,
            ids,
            max_attempts=runtime.settings.max_attempts,
            lease_s=runtime.settings.lease_s,
        )
    assert client.delete(batch["links"]["self"], headers=auth).status_code == 200

    report = grade_claimed(runtime, claims)
    assert (report.graded, report.failed, report.fenced_out) == (0, 0, 1)
    assert _count(sessions, Result) == 0
    status = client.get(batch["links"]["self"], headers=auth).get_json()
    assert (status["state"], status["counts"]["cancelled"]) == ("cancelled", 1)


def test_delete_leaves_a_finished_batch_finished(
    client: FlaskClient,
    auth: dict[str, str],
    submit: Callable[..., Submitted],
    runtime: WorkerRuntime,
    fundus_jpeg: Callable[..., bytes],
) -> None:
    batch, ids = submit([(fundus_jpeg(seed=i), f"{i}.jpg") for i in range(2)])
    grade_images(runtime, ids)
    finished = client.get(batch["links"]["self"], headers=auth).get_json()
    assert finished["state"] == "completed"

    body = client.delete(batch["links"]["self"], headers=auth).get_json()
    assert body["state"] == "completed"
    assert body["completed_at"] == finished["completed_at"]
    assert client.get(batch["links"]["self"], headers=auth).get_json()["counts"]["graded"] == 2


def test_delete_closes_and_cancels_an_open_batch(
    client: FlaskClient, auth: dict[str, str], fundus_jpeg: Callable[..., bytes]
) -> None:
    batch = client.post("/v1/batches", headers=auth, json={"open": True}).get_json()
    add = batch["links"]["add_images"]
    client.post(add, headers=auth, data={"images": [(io.BytesIO(fundus_jpeg()), "a.jpg")]})

    body = client.delete(batch["links"]["self"], headers=auth).get_json()
    assert body["state"] == "cancelled"
    assert body["closed_at"] is not None
    assert "add_images" not in body["links"] and "close" not in body["links"]
    late = client.post(add, headers=auth, data={"images": [(io.BytesIO(fundus_jpeg()), "b.jpg")]})
    assert late.status_code == 409
    assert late.get_json()["error"]["code"] == "batch_closed"


def test_purge_deletes_rows_and_bytes_but_keeps_bytes_another_image_shares(
    client: FlaskClient,
    auth: dict[str, str],
    make_programme: Callable[[str], dict[str, str]],
    submit: Callable[..., Submitted],
    runtime: WorkerRuntime,
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    store: ObjectStore,
) -> None:
    shared = fundus_jpeg(seed=1)
    batch, ids = submit([(fundus_jpeg(seed=0), "own.jpg"), (shared, "shared.jpg")])
    grade_images(runtime, ids[:1])
    other_programme = make_programme("Elsewhere")
    theirs, their_ids = submit([(shared, "same-eye.jpg")], headers=other_programme)
    own_file = _file_of(sessions, ids[0])
    shared_file = _file_of(sessions, ids[1])

    response = client.delete(batch["links"]["self"] + "?purge=true", headers=auth)
    assert response.status_code == 204
    assert response.data == b""

    batch_id = uuid.UUID(batch["id"])
    assert _count(sessions, Batch, Batch.id == batch_id) == 0
    assert _count(sessions, Image, Image.batch_id == batch_id) == 0
    assert _count(sessions, Result, Result.batch_id == batch_id) == 0
    assert not _is_stored(store, own_file)
    assert store.read(shared_file) == shared
    assert client.get(batch["links"]["self"], headers=auth).status_code == 404
    assert client.delete(batch["links"]["self"], headers=auth).status_code == 404

    still = client.get(theirs["links"]["self"], headers=other_programme).get_json()
    assert (still["state"], still["image_count"]) == ("queued", 1)
    assert grade_images(runtime, their_ids).graded == 1, "the shared bytes still grade"

    (audit,) = _deletion_events(sessions)
    assert audit.object_id == batch["id"]
    assert audit.details == {"purge": True, "state": "processing", "image_count": 2}


def test_purge_removes_the_heat_maps_of_its_results(
    client: FlaskClient,
    auth: dict[str, str],
    submit: Callable[..., Submitted],
    runtime: WorkerRuntime,
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    store: ObjectStore,
) -> None:
    batch, ids = submit([(fundus_jpeg(grade=4, seed=3), "referable.jpg")])
    grade_images(runtime, ids)
    assert make_heatmaps(runtime, ids) == 1
    with sessions() as session:
        sha = session.scalars(select(Result.heatmap_sha256)).one()
    assert sha is not None
    heatmap = store.relative_path(sha)
    assert store.read(heatmap).startswith(b"\x89PNG")

    assert client.delete(batch["links"]["self"] + "?purge=true", headers=auth).status_code == 204
    assert not _is_stored(store, heatmap)


def test_purge_removes_no_file_when_the_deletion_is_rolled_back(
    submit: Callable[..., Submitted],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    store: ObjectStore,
) -> None:
    batch, ids = submit([(fundus_jpeg(seed=i), f"{i}.jpg") for i in range(2)])
    files = [_file_of(sessions, i) for i in ids]

    def refuse_commit() -> None:
        raise RuntimeError("the database went away during COMMIT")

    with sessions() as session:
        session.commit = refuse_commit  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="went away"):
            purge_batch(session, store, uuid.UUID(batch["id"]))
        session.rollback()

    assert _count(sessions, Image, Image.id.in_(ids)) == 2
    assert all(_is_stored(store, key) for key in files)


def test_another_programmes_batch_cannot_be_deleted(
    client: FlaskClient,
    auth: dict[str, str],
    make_programme: Callable[[str], dict[str, str]],
    submit: Callable[..., Submitted],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    store: ObjectStore,
) -> None:
    batch, ids = submit([(fundus_jpeg(seed=3), "3.jpg")])
    intruder = make_programme("Intruder")
    missing = f"/v1/batches/{uuid.uuid4()}"
    for query in ("", "?purge=true"):
        foreign = client.delete(batch["links"]["self"] + query, headers=intruder)
        unknown = client.delete(missing + query, headers=intruder)
        assert foreign.status_code == unknown.status_code == 404
        assert foreign.get_json() == unknown.get_json()
        assert foreign.get_json()["error"]["code"] == "not_found"

    status = client.get(batch["links"]["self"], headers=auth).get_json()
    assert (status["state"], status["counts"]["queued"]) == ("queued", 1)
    assert _is_stored(store, _file_of(sessions, ids[0]))
    assert _deletion_events(sessions) == []


def test_an_unreadable_purge_flag_is_400(
    client: FlaskClient, auth: dict[str, str], submit: Callable[..., Submitted], fundus_jpeg
) -> None:
    batch, _ = submit([(fundus_jpeg(), "a.jpg")])
    response = client.delete(batch["links"]["self"] + "?purge=perhaps", headers=auth)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_purge"
    assert client.get(batch["links"]["self"], headers=auth).get_json()["state"] == "queued"


def test_admin_purge_older_than_removes_old_batches_only(
    submit: Callable[..., Submitted],
    runtime: WorkerRuntime,
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    settings: Settings,
    store: ObjectStore,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from common.settings import get_settings

    shared = fundus_jpeg(seed=20)
    finished, finished_ids = submit([(fundus_jpeg(seed=21), "a.jpg"), (shared, "b.jpg")])
    grade_images(runtime, finished_ids)
    pending, pending_ids = submit([(fundus_jpeg(seed=22), "c.jpg")])
    recent, recent_ids = submit([(shared, "d.jpg")])
    old_batches = [uuid.UUID(finished["id"]), uuid.UUID(pending["id"])]
    with sessions.begin() as session:
        session.execute(
            update(Batch)
            .where(Batch.id.in_(old_batches))
            .values(created_at=utcnow() - timedelta(days=100))
        )
    old_only = [_file_of(sessions, i) for i in (finished_ids[0], pending_ids[0])]
    shared_file = _file_of(sessions, recent_ids[0])

    monkeypatch.setenv("RETINAQ_DATABASE_URL", database_url)
    monkeypatch.setenv("RETINAQ_VAR_DIR", str(settings.var_dir))
    monkeypatch.setenv("RETINAQ_STORAGE_URL", settings.storage_url)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        for bad in ("ninety", "90", "0d", "3w"):
            refused = runner.invoke(cli, ["admin", "purge", "--older-than", bad])
            assert refused.exit_code == 2, bad
            assert "not an age like 90d, 12h or 30m" in refused.output
        assert _count(sessions, Batch) == 3

        result = runner.invoke(cli, ["admin", "purge", "--older-than", "90d"])
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        for expected in (
            "batches deleted: 2",
            "batches cancelled first: 1",
            "images deleted: 3",
            "images cancelled first: 1",
            "results deleted: 2",
            "image files removed: 2",
            "image files kept (shared with other images): 1",
        ):
            assert expected in lines, result.output

        again = runner.invoke(cli, ["admin", "purge", "--older-than", "1h"])
        assert again.exit_code == 0
        assert "batches deleted: 0" in again.output.splitlines()
    finally:
        get_settings.cache_clear()

    with sessions() as session:
        assert session.scalars(select(Batch.id)).all() == [uuid.UUID(recent["id"])]
        assert session.scalar(select(func.count()).select_from(Image)) == 1
    assert not any(_is_stored(store, key) for key in old_only)
    assert store.read(shared_file) == shared
