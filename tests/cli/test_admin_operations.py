"""``retinaq admin programmes`` and ``retinaq admin requeue``, through the command line, on
the real PostgreSQL and Redis."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from cli.main import cli
from common.access.apikeys import issue_api_key, revoke_api_key
from common.db.tables import (
    ApiKey,
    AuditEvent,
    Batch,
    BatchState,
    Image,
    ImageState,
    Programme,
    utcnow,
)
from common.lifecycle.retention import cancel_batch, purge_batch
from common.settings import Settings, get_settings
from common.storage.base import ObjectStore
from tests.conftest import Submitted
from tests.support import free_port

Submit = Callable[..., Submitted]


def cli_environment(settings: Settings) -> dict[str, str]:
    """The RETINAQ_* variables that make ``get_settings()`` in a command equal ``settings``."""
    return {
        "RETINAQ_VAR_DIR": str(settings.var_dir),
        "RETINAQ_DATABASE_URL": settings.database_url,
        "RETINAQ_BROKER_URL": settings.broker_url,
        "RETINAQ_STORAGE_URL": settings.storage_url,
        "RETINAQ_QUEUE_NAME": settings.queue_name,
        "RETINAQ_HEATMAP_QUEUE_NAME": settings.heatmap_queue_name,
        "RETINAQ_TASK_SIZE": str(settings.task_size),
        "RETINAQ_MAX_ATTEMPTS": str(settings.max_attempts),
    }


@pytest.fixture
def run(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Result]]:
    """Invoke ``retinaq`` with the test's settings (database, broker, queue, store)."""
    for name, value in cli_environment(settings).items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    runner = CliRunner()
    yield lambda *args: runner.invoke(cli, list(args))
    get_settings.cache_clear()


def _jpegs(fundus_jpeg: Callable[..., bytes], count: int, seed: int = 0) -> list[tuple[bytes, str]]:
    return [(fundus_jpeg(seed=seed + i), f"eye{seed + i}.jpg") for i in range(count)]


# --- programmes ---------------------------------------------------------------------------


def test_programmes_lists_quotas_pending_activity_and_keys(
    run: Callable[..., Result],
    submit: Submit,
    make_programme: Callable[[str], dict[str, str]],
    auth: dict[str, str],
    sessions: sessionmaker[Session],
    fundus_jpeg: Callable[..., bytes],
    settings: Settings,
) -> None:
    north = auth  # a programme called "North"
    make_programme("Idle clinic")
    body, ids = submit(_jpegs(fundus_jpeg, 3), north)
    second, second_ids = submit(_jpegs(fundus_jpeg, 2, seed=10), north)
    with sessions.begin() as session:
        # One image in work, one finished: pending counts queued and processing only.
        session.execute(update(Image).where(Image.id == ids[0]).values(state=ImageState.PROCESSING))
        session.execute(update(Image).where(Image.id == ids[1]).values(state=ImageState.GRADED))
        programme = session.scalars(select(Programme).where(Programme.name == "North")).one()
        programme.max_pending_images = 500
        issue_api_key(session, programme, None)
        revoked = issue_api_key(session, programme, None)
        revoke_api_key(session, revoked.prefix)

    result = run("admin", "programmes", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)["programmes"]}
    assert list(rows) == ["Idle clinic", "North"]
    north_row, idle = rows["North"], rows["Idle clinic"]
    assert north_row["pending_images"] == 4  # 5 submitted, 1 graded
    assert (north_row["max_pending_images"], north_row["max_pending_images_default"]) == (
        500,
        False,
    )
    assert north_row["max_images_per_minute"] == settings.default_max_images_per_minute
    assert north_row["max_images_per_minute_default"] is True
    assert (north_row["active_keys"], north_row["keys"]) == (2, 3)
    assert north_row["last_activity_at"] is not None
    assert idle["pending_images"] == 0 and idle["last_activity_at"] is None
    assert (idle["active_keys"], idle["keys"]) == (1, 1)

    table = run("admin", "programmes")
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split()[:2] == ["programme", "pending"]
    north_line = next(line for line in lines if line.startswith("North"))
    assert north_line.split()[1:3] == ["4", "500"]
    assert "(default)" in north_line and "2 active of 3" in north_line
    assert "never" in next(line for line in lines if line.startswith("Idle clinic"))


def test_programmes_pending_ignores_finished_batches_and_expired_keys(
    run: Callable[..., Result],
    submit: Submit,
    sessions: sessionmaker[Session],
    fundus_jpeg: Callable[..., bytes],
    auth: dict[str, str],
) -> None:
    body, ids = submit(_jpegs(fundus_jpeg, 2), auth)
    with sessions.begin() as session:
        session.execute(update(Image).where(Image.id.in_(ids)).values(state=ImageState.GRADED))
        session.execute(
            update(Batch)
            .where(Batch.id == uuid.UUID(body["id"]))
            .values(state=BatchState.COMPLETED)
        )
        session.execute(update(ApiKey).values(expires_at=utcnow() - timedelta(hours=1)))
    row = json.loads(run("admin", "programmes", "--json").stdout)["programmes"][0]
    assert (row["pending_images"], row["active_keys"], row["keys"]) == (0, 0, 1)


def test_programmes_with_none_says_how_to_make_one(run: Callable[..., Result]) -> None:
    result = run("admin", "programmes")
    assert result.exit_code == 0
    assert "create-programme" in result.stdout
    assert json.loads(run("admin", "programmes", "--json").stdout) == {"programmes": []}


# --- requeue ------------------------------------------------------------------------------


def test_requeue_resends_queued_and_expired_leaves_live_claims_alone(
    run: Callable[..., Result],
    submit: Submit,
    sessions: sessionmaker[Session],
    fundus_jpeg: Callable[..., bytes],
    auth: dict[str, str],
    queued_tasks: Callable[[], list[list[str]]],
    redis_client,
    queue_name: str,
) -> None:
    body, ids = submit(_jpegs(fundus_jpeg, 5), auth)
    queued, expired, live, failed, graded = ids
    now = utcnow()
    with sessions.begin() as session:
        session.execute(
            update(Image)
            .where(Image.id.in_([expired, live]))
            .values(state=ImageState.PROCESSING, attempts=1)
        )
        session.execute(
            update(Image)
            .where(Image.id == expired)
            .values(lease_expires_at=now - timedelta(seconds=5))
        )
        session.execute(
            update(Image).where(Image.id == live).values(lease_expires_at=now + timedelta(hours=1))
        )
        session.execute(
            update(Image)
            .where(Image.id == failed)
            .values(state=ImageState.FAILED, attempts=2, error_code="corrupt_image")
        )
        session.execute(update(Image).where(Image.id == graded).values(state=ImageState.GRADED))
    redis_client.delete(queue_name)

    result = run("admin", "requeue", body["id"])
    assert result.exit_code == 0, result.output
    assert "queued images sent again: 1" in result.stdout
    assert "expired leases handed back: 1" in result.stdout
    assert "being graded now (live lease), left alone: 1" in result.stdout
    assert "failed images restarted" not in result.stdout
    assert "batch state: processing" in result.stdout
    sent = sorted(i for task in queued_tasks() for i in task)
    assert sent == sorted([str(queued), str(expired)])
    with sessions() as session:
        states = {i: state for i, state in session.execute(select(Image.id, Image.state))}
        attempts = {i: n for i, n in session.execute(select(Image.id, Image.attempts))}
        assert session.scalar(select(Image.lease_expires_at).where(Image.id == expired)) is None
        assert session.scalars(select(AuditEvent.action)).all().count("batch.requeue") == 0
    assert states[expired] == ImageState.QUEUED and attempts[expired] == 1  # a claim was used
    assert states[live] == ImageState.PROCESSING
    assert states[failed] == ImageState.FAILED


def test_requeue_failed_restarts_them_reopens_the_batch_and_keeps_an_audit_event(
    run: Callable[..., Result],
    submit: Submit,
    sessions: sessionmaker[Session],
    fundus_jpeg: Callable[..., bytes],
    auth: dict[str, str],
    queued_tasks: Callable[[], list[list[str]]],
    redis_client,
    queue_name: str,
    runtime,
) -> None:
    from worker.grading.pipeline import grade_images

    body, ids = submit(_jpegs(fundus_jpeg, 3), auth)
    batch_id = uuid.UUID(body["id"])
    grade_images(runtime, ids[:2])
    now = utcnow()
    with sessions.begin() as session:
        session.execute(
            update(Image)
            .where(Image.id == ids[2])
            .values(
                state=ImageState.FAILED,
                attempts=5,
                error_code="too_many_attempts",
                error_message="grading was attempted 5 times without finishing",
                finished_at=now,
            )
        )
        session.execute(
            update(Batch)
            .where(Batch.id == batch_id)
            .values(state=BatchState.COMPLETED_WITH_ERRORS, completed_at=now)
        )
    redis_client.delete(queue_name)

    result = run("admin", "requeue", str(batch_id), "--failed")
    assert result.exit_code == 0, result.output
    assert "failed images restarted: 1" in result.stdout
    assert "batch state: processing" in result.stdout
    assert [i for task in queued_tasks() for i in task] == [str(ids[2])]
    with sessions() as session:
        image = session.get(Image, ids[2])
        batch = session.get(Batch, batch_id)
        event = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "batch.requeue")
        ).one()
        assert image is not None and batch is not None
        assert (image.state, image.attempts, image.error_code, image.error_message) == (
            ImageState.QUEUED,
            0,
            None,
            None,
        )
        assert image.finished_at is None
        assert (batch.state, batch.completed_at) == (BatchState.PROCESSING, None)
        assert event.object_id == str(batch_id) and event.programme_id == batch.programme_id
        assert event.details == {"failed_restarted": 1, "requeued": 0}

    # The worker grades it as any other, and the batch settles: completed, no error now.
    grade_images(runtime, [ids[2]])
    with sessions() as session:
        batch = session.get(Batch, batch_id)
        assert batch is not None
        assert batch.state == BatchState.COMPLETED and batch.completed_at is not None
    status = run("admin", "requeue", str(batch_id), "--failed")
    assert status.exit_code == 0 and "batch state: completed" in status.stdout
    assert "failed images restarted: 0" in status.stdout


def test_requeue_fails_images_out_of_attempts_and_settles_the_batch(
    run: Callable[..., Result],
    submit: Submit,
    sessions: sessionmaker[Session],
    fundus_jpeg: Callable[..., bytes],
    auth: dict[str, str],
    settings: Settings,
) -> None:
    body, ids = submit(_jpegs(fundus_jpeg, 1), auth)
    with sessions.begin() as session:
        session.execute(
            update(Image)
            .where(Image.id == ids[0])
            .values(
                state=ImageState.PROCESSING,
                attempts=settings.max_attempts,
                lease_expires_at=utcnow() - timedelta(seconds=1),
            )
        )
    result = run("admin", "requeue", body["id"])
    assert result.exit_code == 0, result.output
    assert "out of attempts, now failed: 1" in result.stdout
    assert "batch state: completed_with_errors" in result.stdout


def test_requeue_refuses_unknown_purged_cancelled_and_malformed_batches(
    run: Callable[..., Result],
    submit: Submit,
    sessions: sessionmaker[Session],
    fundus_jpeg: Callable[..., bytes],
    auth: dict[str, str],
    store: ObjectStore,
) -> None:
    unknown = run("admin", "requeue", str(uuid.uuid4()))
    assert unknown.exit_code == 1
    assert "never created, or purged" in unknown.output

    purged, _ = submit(_jpegs(fundus_jpeg, 1), auth)
    with sessions() as session:
        purge_batch(session, store, uuid.UUID(purged["id"]))
        session.commit()
    gone = run("admin", "requeue", purged["id"], "--failed")
    assert gone.exit_code == 1 and "never created, or purged" in gone.output

    cancelled, _ = submit(_jpegs(fundus_jpeg, 1, seed=5), auth)
    with sessions.begin() as session:
        assert cancel_batch(session, uuid.UUID(cancelled["id"])).batch_cancelled
    refused = run("admin", "requeue", cancelled["id"])
    assert refused.exit_code == 1 and "is cancelled" in refused.output

    malformed = run("admin", "requeue", "not-a-batch")
    assert malformed.exit_code == 2 and "not a valid UUID" in malformed.output


def test_requeue_with_the_broker_down_says_the_images_wait_for_the_reconciler(
    run: Callable[..., Result],
    submit: Submit,
    sessions: sessionmaker[Session],
    fundus_jpeg: Callable[..., bytes],
    auth: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body, ids = submit(_jpegs(fundus_jpeg, 1), auth)
    with sessions.begin() as session:
        session.execute(
            update(Image)
            .where(Image.id == ids[0])
            .values(state=ImageState.FAILED, attempts=1, error_code="missing_file")
        )
    monkeypatch.setenv("RETINAQ_BROKER_URL", f"redis://127.0.0.1:{free_port()}/0")
    get_settings.cache_clear()
    result = run("admin", "requeue", body["id"], "--failed")
    assert result.exit_code == 1
    assert "failed images restarted: 1" in result.stdout
    assert "the broker did not take the tasks" in result.stderr
    assert "the reconciler sends them" in result.stderr
    with sessions() as session:
        assert session.scalar(select(Image.state).where(Image.id == ids[0])) == ImageState.QUEUED


def test_admin_commands_name_an_unreachable_database_in_one_line(
    run: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "RETINAQ_DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x"
    )
    get_settings.cache_clear()
    for args in (("programmes",), ("requeue", str(uuid.uuid4()))):
        result = run("admin", *args)
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith("Error: cannot reach the database: ")
        assert len(result.stderr.splitlines()) == 1
