"""``retinaq admin``: key expiry and per-programme quotas, through the command line."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from click.testing import CliRunner, Result
from flask.testing import FlaskClient
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from cli.main import cli
from common.access.apikeys import programme_for_key
from common.db.tables import ApiKey, Programme, utcnow
from common.settings import Settings, get_settings


@pytest.fixture
def run(
    database_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Result]]:
    """Invoke ``retinaq`` against the test database (``engine`` has it emptied after)."""
    monkeypatch.setenv("RETINAQ_DATABASE_URL", database_url)
    get_settings.cache_clear()
    runner = CliRunner()
    yield lambda *args: runner.invoke(cli, list(args))
    get_settings.cache_clear()


def _key(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[-1]


def test_create_programme_with_expiry(
    run: Callable[..., Result], sessions: sessionmaker[Session]
) -> None:
    before = utcnow()
    result = run("admin", "create-programme", "Van 3", "--expires-in", "90d")
    key = _key(result)
    assert "expires " in result.stderr
    with sessions() as session:
        stored = session.scalars(select(ApiKey)).one()
        assert programme_for_key(session, key) is not None
        assert programme_for_key(session, key, now=utcnow() + timedelta(days=91)) is None
    assert stored.expires_at is not None
    assert before + timedelta(days=90) <= stored.expires_at <= utcnow() + timedelta(days=90)


def test_create_key_with_expiry_in_hours_and_without(
    run: Callable[..., Result], sessions: sessionmaker[Session]
) -> None:
    _key(run("admin", "create-programme", "Van 4"))
    short = _key(run("admin", "create-key", "Van 4", "--expires-in", "12h"))
    lasting_result = run("admin", "create-key", "Van 4")
    lasting = _key(lasting_result)
    assert "no expiry" in lasting_result.stderr
    later = utcnow() + timedelta(hours=13)
    with sessions() as session:
        holder = programme_for_key(session, short)
        assert holder is not None and holder.prefix == short[:11]
        assert programme_for_key(session, short, now=later) is None
        assert programme_for_key(session, lasting, now=later) is not None


@pytest.mark.parametrize("bad", ["10", "0d", "5w", "-3h", "d"])
def test_bad_durations_are_refused(run: Callable[..., Result], bad: str) -> None:
    result = run("admin", "create-programme", "Van 5", "--expires-in", bad)
    assert result.exit_code == 2
    assert "is not an age like 90d, 12h or 30m" in result.output


def test_list_keys_shows_expiry_and_state(
    run: Callable[..., Result], sessions: sessionmaker[Session]
) -> None:
    never = _key(run("admin", "create-programme", "Van 6"))
    soon = _key(run("admin", "create-key", "Van 6", "--expires-in", "1h"))
    gone = _key(run("admin", "create-key", "Van 6", "--expires-in", "1d"))
    with sessions.begin() as session:
        session.execute(
            update(ApiKey)
            .where(ApiKey.prefix == gone[:11])
            .values(expires_at=utcnow() - timedelta(minutes=1))
        )
    listing = run("admin", "list-keys")
    assert listing.exit_code == 0, listing.output
    lines = {line.split()[0]: line for line in listing.stdout.splitlines()}
    assert "active" in lines[never[:11]] and "no expiry" in lines[never[:11]]
    assert "active" in lines[soon[:11]] and "expires " in lines[soon[:11]]
    assert "expired" in lines[gone[:11]]
    for key in (never, soon, gone):
        assert key not in listing.output


def test_set_quota_sets_and_resets(
    run: Callable[..., Result], sessions: sessionmaker[Session]
) -> None:
    _key(run("admin", "create-programme", "Van 7"))
    result = run("admin", "set-quota", "Van 7", "--max-pending", "500", "--max-per-minute", "60")
    assert result.exit_code == 0, result.output
    assert "max pending images 500" in result.stdout
    assert "max images per minute 60" in result.stdout
    with sessions() as session:
        programme = session.scalars(select(Programme)).one()
    assert (programme.max_pending_images, programme.max_images_per_minute) == (500, 60)

    reset = run("admin", "set-quota", "Van 7", "--max-pending", "default")
    assert reset.exit_code == 0, reset.output
    assert "(default)" in reset.stdout
    with sessions() as session:
        programme = session.scalars(select(Programme)).one()
    assert (programme.max_pending_images, programme.max_images_per_minute) == (None, 60)


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["set-quota", "Van 8"], 2, "give --max-pending"),
        (["set-quota", "Van 8", "--max-pending", "0"], 2, "not a positive whole number"),
        (["set-quota", "Van 8", "--max-per-minute", "lots"], 2, "not a positive whole number"),
        (["set-quota", "Nowhere", "--max-pending", "5"], 1, "no programme named"),
    ],
)
def test_set_quota_refuses_bad_input(
    run: Callable[..., Result], args: list[str], code: int, fragment: str
) -> None:
    _key(run("admin", "create-programme", "Van 8"))
    result = run("admin", *args)
    assert result.exit_code == code
    assert fragment in result.output


def test_quota_set_through_the_cli_is_enforced_by_the_api(
    run: Callable[..., Result],
    client: FlaskClient,
    settings: Settings,
    fundus_jpeg: Callable[..., bytes],
) -> None:
    key = _key(run("admin", "create-programme", "Van 9", "--expires-in", "1d"))
    assert run("admin", "set-quota", "Van 9", "--max-pending", "2").exit_code == 0
    headers = {"Authorization": f"Bearer {key}"}
    for round_ in range(2):
        files = [(io.BytesIO(fundus_jpeg(seed=round_ * 2 + i)), f"e{i}.jpg") for i in range(2)]
        response = client.post("/v1/batches", headers=headers, data={"images": files})
    assert response.status_code == 429
    assert response.get_json()["error"]["code"] == "quota_exceeded"
