"""``retinaq admin models activate``: the registry model workers serve, stored once verified;
and ``GET /v1/models`` reporting it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api import create_app
from cli.main import cli
from common.db.tables import ActiveModel
from common.modelling.activation import serving_model_file
from common.modelling.manifest import MANIFEST_NAME, read_manifest
from common.settings import Settings, get_settings


@pytest.fixture
def registry(tmp_path: Path, registry_model: Callable[..., Path]) -> Path:
    root = tmp_path / "models"
    registry_model(root, "screening-a", version="1.0.0")
    registry_model(root, "screening-b", version="2.0.0")
    return root


@pytest.fixture
def run(
    database_url: str, registry: Path, engine, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Result]]:
    """``retinaq`` on the test database with the test registry (``engine`` empties it after)."""
    monkeypatch.setenv("RETINAQ_DATABASE_URL", database_url)
    monkeypatch.setenv("RETINAQ_MODELS_DIR", str(registry))
    monkeypatch.setenv("RETINAQ_MODEL_NAME", "screening-a")
    monkeypatch.delenv("RETINAQ_MODEL_PATH", raising=False)
    get_settings.cache_clear()
    runner = CliRunner()
    yield lambda *args: runner.invoke(cli, list(args))
    get_settings.cache_clear()


def _stored(sessions: sessionmaker[Session]) -> list[tuple[str, str, str, str]]:
    with sessions() as session:
        rows = session.execute(
            select(ActiveModel.role, ActiveModel.name, ActiveModel.version, ActiveModel.sha256)
        ).all()
    return [(role, name, version, sha) for role, name, version, sha in rows]


def test_activate_stores_the_verified_model_and_says_what_it_replaced(
    run: Callable[..., Result], registry: Path, sessions: sessionmaker[Session]
) -> None:
    manifest = read_manifest(registry / "screening-b" / "model.keras")
    result = run("admin", "models", "activate", "screening-b")
    assert result.exit_code == 0, result.output
    assert "activated screening-b 2.0.0" in result.stdout
    assert "instead of the settings' model" in result.stdout
    assert _stored(sessions) == [("grading", "screening-b", "2.0.0", manifest.sha256)]

    again = run("admin", "models", "activate", "screening-b")
    assert again.exit_code == 0 and "was already active" in again.stdout
    back = run("admin", "models", "activate", "screening-a")
    assert back.exit_code == 0 and "instead of screening-b 2.0.0" in back.stdout
    assert [row[1] for row in _stored(sessions)] == ["screening-a"]

    listing = run("admin", "models", "list")
    assert listing.exit_code == 0, listing.output
    assert listing.stdout.splitlines() == [
        f"* screening-a  1.0.0  sha256 {manifest.sha256[:12]}",
        f"  screening-b  2.0.0  sha256 {manifest.sha256[:12]}",
    ]


@pytest.mark.parametrize(
    ("name", "damage", "message"),
    [
        ("screening-z", None, "no model called 'screening-z'"),
        ("../screening-a", None, "is not a model name"),
        ("screening-b", "tamper", "has SHA-256"),
        ("screening-b", "manifest", "is not valid JSON"),
    ],
)
def test_activate_refuses_a_model_that_does_not_verify(
    run: Callable[..., Result],
    registry: Path,
    sessions: sessionmaker[Session],
    name: str,
    damage: str | None,
    message: str,
) -> None:
    assert run("admin", "models", "activate", "screening-a").exit_code == 0
    if damage == "tamper":
        with (registry / name / "model.keras").open("ab") as file:
            file.write(b"\0")
    elif damage == "manifest":
        (registry / name / MANIFEST_NAME).write_text("{not json")
    result = run("admin", "models", "activate", name)
    assert result.exit_code == 1
    assert "not activated" in result.output and message in result.output
    assert [row[1] for row in _stored(sessions)] == ["screening-a"]  # unchanged


def test_models_api_reports_the_active_model(
    run: Callable[..., Result],
    registry: Path,
    database_url: str,
    auth: dict[str, str],
    tmp_path: Path,
) -> None:
    settings = Settings(
        var_dir=tmp_path / "var",
        database_url=database_url,
        models_dir=registry,
        model_name="screening-a",
        secret_key="test-secret-key-for-sealing-cursors",
    )
    app = create_app(settings)
    try:
        client = app.test_client()
        before = client.get("/v1/models", headers=auth).get_json()
        assert (before["serving"], before["active"]) == ("screening-a", None)
        assert run("admin", "models", "activate", "screening-b").exit_code == 0
        after = client.get("/v1/models", headers=auth).get_json()
        assert after["serving"] == "screening-b"
        assert after["active"]["name"] == "screening-b"
        assert after["active"]["version"] == "2.0.0"
        assert [item["serving"] for item in after["items"]] == [False, True]
        one = client.get("/v1/models/screening-b", headers=auth).get_json()
        assert one["serving"] is True
        # A worker pinned to a file by RETINAQ_MODEL_PATH is not moved by an activation.
        pinned = settings.model_copy(update={"model_path": registry / "screening-a/model.keras"})
        assert "model_path" in pinned.model_fields_set
    finally:
        app.extensions["retinaq"].engine.dispose()
    pinned_app = create_app(pinned)
    try:
        body = pinned_app.test_client().get("/v1/models", headers=auth).get_json()
        assert body["serving"] == "screening-a" and body["active"]["name"] == "screening-b"
    finally:
        pinned_app.extensions["retinaq"].engine.dispose()
    assert serving_model_file(pinned, None) == registry / "screening-a" / "model.keras"
    assert [item["serving"] for item in body["items"]] == [True, False]
