"""``retinaq admin set-scheme``: a programme's grading scheme, as stored and as listed."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from cli.main import cli
from common.db.tables import Programme
from common.screening.programmes import programme_scheme
from common.settings import get_settings


@pytest.fixture
def run(
    database_url: str, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Result]]:
    """Invoke ``retinaq`` against the test database."""
    monkeypatch.setenv("RETINAQ_DATABASE_URL", database_url)
    get_settings.cache_clear()
    runner = CliRunner()
    yield lambda *args: runner.invoke(cli, list(args))
    get_settings.cache_clear()


def test_set_scheme_stores_it_and_programmes_shows_it(
    run: Callable[..., Result], sessions: sessionmaker[Session]
) -> None:
    assert run("admin", "create-programme", "North").exit_code == 0
    listed = json.loads(run("admin", "programmes", "--json").stdout)["programmes"][0]
    assert (listed["scheme"], listed["recall_months"]) == ("icdr", {"icdr0": 12, "icdr1": 12})

    result = run(
        "admin",
        "set-scheme",
        "North",
        "--scheme",
        "nhs-desp",
        "--recall",
        "r0=24,r1=12",
        "--map",
        "2=r1",
    )
    assert result.exit_code == 0, result.output
    assert "2->R1" in result.stdout and "r0=24" in result.stdout
    with sessions() as session:
        programme = session.query(Programme).one()
        scheme = programme_scheme(session, programme.id)
    assert scheme.name == "nhs-desp"
    assert scheme.mapping == ("R0", "R1", "R1", "R2", "R3A")
    assert dict(scheme.recall) == {"r0": 24, "r1": 12, "r0_repeat": 24}

    table = run("admin", "programmes").stdout
    assert "nhs-desp (r0=24 r0_repeat=24 r1=12)" in table


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scheme", "nhs-desp", "--recall", "r2=12"], "unknown recall"),
        (["--scheme", "nhs-desp", "--recall", "r0=soon"], "not a whole number"),
        (["--scheme", "nhs-desp", "--map", "2=R1,3=R1,4=R1"], "proliferative"),
        (["--scheme", "etdrs"], "etdrs"),
    ],
)
def test_set_scheme_refuses_what_it_cannot_use(
    run: Callable[..., Result], args: list[str], message: str
) -> None:
    assert run("admin", "create-programme", "North").exit_code == 0
    result = run("admin", "set-scheme", "North", *args)
    assert result.exit_code == 2
    assert message in result.output


def test_set_scheme_for_an_unknown_programme(run: Callable[..., Result]) -> None:
    result = run("admin", "set-scheme", "Nowhere", "--scheme", "icdr")
    assert result.exit_code == 1
    assert "no programme named 'Nowhere'" in result.output
