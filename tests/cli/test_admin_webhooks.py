"""``retinaq admin set-webhook``: the default URL, the events, and a signing secret shown once."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from cli.main import cli
from common.access.apikeys import create_programme
from common.db.tables import ProgrammeWebhook
from common.settings import get_settings

SECRET_LINE = "signing secret (shown once, store it now): "


@pytest.fixture
def run(
    database_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Result]]:
    """Invoke ``retinaq`` against the test database (``engine`` has it emptied after)."""
    monkeypatch.setenv("RETINAQ_DATABASE_URL", database_url)
    monkeypatch.delenv("RETINAQ_WEBHOOK_ALLOWED_NETWORKS", raising=False)
    get_settings.cache_clear()
    runner = CliRunner()
    yield lambda *args: runner.invoke(cli, list(args))
    get_settings.cache_clear()


def _secret(result: Result) -> str | None:
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith(SECRET_LINE)]
    return lines[0].removeprefix(SECRET_LINE) if lines else None


def _stored(sessions: sessionmaker[Session]) -> ProgrammeWebhook:
    with sessions() as session:
        row = session.scalars(select(ProgrammeWebhook)).one()
        session.expunge(row)
        return row


def test_set_webhook_shows_the_secret_once_and_rotates_it(
    run: Callable[..., Result], sessions: sessionmaker[Session]
) -> None:
    with sessions.begin() as session:
        create_programme(session, "North")
    first = run("admin", "set-webhook", "North", "https://hooks.example.org/in", "--on-referable")
    secret = _secret(first)
    assert secret is not None and secret.startswith("whsec_")
    assert "events batch.completed, result.referable" in first.stdout
    stored = _stored(sessions)
    assert (stored.url, stored.on_referable, stored.secret) == (
        "https://hooks.example.org/in",
        True,
        secret,
    )

    again = run("admin", "set-webhook", "North", "--no-on-referable")
    assert _secret(again) is None  # never shown a second time
    assert "default URL https://hooks.example.org/in; events batch.completed\n" in again.stdout
    assert _stored(sessions).secret == secret

    rotated = _secret(run("admin", "set-webhook", "North", "--rotate-secret"))
    assert rotated is not None and rotated != secret
    assert _stored(sessions).secret == rotated

    cleared = run("admin", "set-webhook", "North", "--clear-url")
    assert "default URL (none)" in cleared.stdout and _stored(sessions).url is None


@pytest.mark.parametrize(
    ("url", "why"),
    [("http://hooks.example.org/in", "https"), ("https://10.0.0.8/in", "private")],
)
def test_set_webhook_refuses_an_unsafe_url(
    run: Callable[..., Result], sessions: sessionmaker[Session], url: str, why: str
) -> None:
    with sessions.begin() as session:
        create_programme(session, "North")
    result = run("admin", "set-webhook", "North", url)
    assert result.exit_code == 2 and why in result.output
    with sessions() as session:
        assert session.scalars(select(ProgrammeWebhook)).all() == []


def test_set_webhook_names_an_unknown_programme(run: Callable[..., Result]) -> None:
    result = run("admin", "set-webhook", "Nowhere", "https://hooks.example.org/in")
    assert result.exit_code == 1 and "no programme named 'Nowhere'" in result.output
