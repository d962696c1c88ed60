"""Alembic: one head, upgrade from empty equals the models, downgrade works, head is enforced."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from api import create_app
from common.db.schema import SchemaNotAtHead, alembic_config, assert_schema_at_head, upgrade_to_head
from common.db.tables import Base
from common.settings import Settings
from tests.support import scratch_database


@pytest.fixture
def empty_database(postgres_server_url: str) -> Iterator[str]:
    """A brand-new empty PostgreSQL database."""
    with scratch_database(postgres_server_url, "retinaq_mig") as url:
        yield url


def test_exactly_one_head() -> None:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_upgrade_from_empty_matches_the_models(backend: str, empty_database: str, tmp_path) -> None:
    url = empty_database if backend == "postgresql" else f"sqlite:///{tmp_path / 'm.sqlite3'}"
    upgrade_to_head(url)
    engine = create_engine(url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()


def test_downgrade_to_base_and_back(empty_database: str) -> None:
    config = alembic_config(empty_database)
    command.upgrade(config, "head")
    command.downgrade(config, "base")
    engine = create_engine(empty_database)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    command.upgrade(config, "head")


def test_api_refuses_to_start_on_an_unmigrated_database(empty_database: str, tmp_path) -> None:
    settings = Settings(var_dir=tmp_path, database_url=empty_database)
    with pytest.raises(SchemaNotAtHead, match="retinaq db upgrade"):
        create_app(settings)


def test_schema_check_passes_at_head(empty_database: str) -> None:
    upgrade_to_head(empty_database)
    engine = create_engine(empty_database)
    assert_schema_at_head(engine)
    engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_0005_marks_batches_already_graded_by_two_models(
    backend: str, empty_database: str, tmp_path
) -> None:
    url = empty_database if backend == "postgresql" else f"sqlite:///{tmp_path / 'm.sqlite3'}"
    config = alembic_config(url)
    command.upgrade(config, "0004")
    engine = create_engine(url)
    programme, now = uuid.uuid4().hex, "2026-11-26 00:00:00"
    batches = {"one-model": ("m", "1", "a" * 64), "two-models": ("m", "1", "a" * 64)}
    graded_by = {"one-model": [("m", "1", "a" * 64)] * 2, "two-models": [("m", "1", "a" * 64)]}
    graded_by["two-models"].append(("m", "2", "a" * 64))  # same file, new release
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO programmes (id, name, created_at) VALUES (:id, 'p', :now)"),
            {"id": programme, "now": now},
        )
        for reference, (name, version, sha) in batches.items():
            batch = uuid.uuid4().hex
            connection.execute(
                text(
                    "INSERT INTO batches (id, programme_id, reference, state, image_count, "
                    "model_name, model_version, model_sha256, created_at) VALUES "
                    "(:id, :programme, :reference, 'completed', 2, :name, :version, :sha, :now)"
                ),
                {"id": batch, "programme": programme, "reference": reference, "now": now}
                | {"name": name, "version": version, "sha": sha},
            )
            for index, (name, version, sha) in enumerate(graded_by[reference]):
                image = uuid.uuid4().hex
                connection.execute(
                    text(
                        "INSERT INTO images (id, batch_id, programme_id, sha256, storage_path, "
                        "size_bytes, filename, state, attempts, created_at) VALUES (:id, :batch, "
                        ":programme, :sha, 'x', 1, 'x.jpg', 'ungradable', 1, :now)"
                    ),
                    {"id": image, "batch": batch, "programme": programme, "now": now}
                    | {"sha": f"{index:064x}"},
                )
                connection.execute(
                    text(
                        "INSERT INTO results (id, image_id, batch_id, gradable, "
                        "referable_threshold, model_name, model_version, model_sha256, "
                        "inference_ms, created_at) VALUES (:id, :image, :batch, false, 0.5, "
                        ":name, :version, :sha, 1.0, :now)"
                    ),
                    {"id": uuid.uuid4().hex, "image": image, "batch": batch, "now": now}
                    | {"name": name, "version": version, "sha": sha},
                )
    command.upgrade(config, "head")
    with engine.connect() as connection:
        mixed = dict(connection.execute(text("SELECT reference, models_mixed FROM batches")).all())
    engine.dispose()
    assert {reference: bool(flag) for reference, flag in mixed.items()} == {
        "one-model": False,
        "two-models": True,
    }


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_0006_gives_every_stored_image_and_heat_map_a_blob_row(
    backend: str, empty_database: str, tmp_path
) -> None:
    url = empty_database if backend == "postgresql" else f"sqlite:///{tmp_path / 'm.sqlite3'}"
    config = alembic_config(url)
    command.upgrade(config, "0005")
    engine = create_engine(url)
    programme, batch, now = uuid.uuid4().hex, uuid.uuid4().hex, "2026-11-26 00:00:00"
    shared, heatmap = "a" * 64, "b" * 64
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO programmes (id, name, created_at) VALUES (:id, 'p', :now)"),
            {"id": programme, "now": now},
        )
        connection.execute(
            text(
                "INSERT INTO batches (id, programme_id, state, image_count, created_at) "
                "VALUES (:id, :programme, 'completed', 2, :now)"
            ),
            {"id": batch, "programme": programme, "now": now},
        )
        for size in (10, 12):  # identical bytes submitted twice
            image = uuid.uuid4().hex
            connection.execute(
                text(
                    "INSERT INTO images (id, batch_id, programme_id, sha256, storage_path, "
                    "size_bytes, filename, state, attempts, created_at) VALUES (:id, :batch, "
                    ":programme, :sha, 'x', :size, 'x.jpg', 'graded', 1, :now)"
                ),
                {"id": image, "batch": batch, "programme": programme, "sha": shared}
                | {"size": size, "now": now},
            )
        connection.execute(
            text(
                "INSERT INTO results (id, image_id, batch_id, gradable, grade, referable, "
                "referable_threshold, model_name, model_version, model_sha256, heatmap_sha256, "
                "inference_ms, created_at) VALUES (:id, :image, :batch, true, 4, true, 0.5, "
                "'m', '1', :model, :heatmap, 1.0, :now)"
            ),
            {"id": uuid.uuid4().hex, "image": image, "batch": batch, "model": "c" * 64}
            | {"heatmap": heatmap, "now": now},
        )
    command.upgrade(config, "head")
    with engine.connect() as connection:
        blobs = dict(connection.execute(text("SELECT sha256, size_bytes FROM blobs")).all())
    engine.dispose()
    assert blobs == {shared: 12, heatmap: 0}


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_alembic_check_finds_the_models_and_migrations_agree(
    backend: str, empty_database: str, tmp_path
) -> None:
    """`alembic check` autogenerates against the models through migrations/env.py."""
    url = empty_database if backend == "postgresql" else f"sqlite:///{tmp_path / 'm.sqlite3'}"
    config = alembic_config(url)
    command.upgrade(config, "head")
    # Raises AutogenerateDiffsDetected on any difference, and CommandError when env.py
    # gives autogenerate no metadata to compare (as it did before).
    command.check(config)


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_0007_puts_every_existing_programme_first_in_turn(
    backend: str, empty_database: str, tmp_path
) -> None:
    url = empty_database if backend == "postgresql" else f"sqlite:///{tmp_path / 'm.sqlite3'}"
    config = alembic_config(url)
    command.upgrade(config, "0006")
    engine = create_engine(url)
    programmes = {uuid.uuid4().hex, uuid.uuid4().hex}
    with engine.begin() as connection:
        for number, programme in enumerate(programmes):
            connection.execute(
                text("INSERT INTO programmes (id, name, created_at) VALUES (:id, :name, :now)"),
                {"id": programme, "name": f"p{number}", "now": "2026-11-29 00:00:00"},
            )
    command.upgrade(config, "head")
    with engine.connect() as connection:
        turns = connection.execute(text("SELECT programme_id, served_at FROM programme_turns"))
        found = {uuid.UUID(str(p)).hex: served for p, served in turns}
    engine.dispose()
    assert found == dict.fromkeys(programmes), "one row each, never served"
