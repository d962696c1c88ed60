"""Shared fixtures: a real PostgreSQL database and a real Redis broker for the whole session,
and a real S3 server (a private SeaweedFS) for the tests that store bytes in S3.

When no server answers at the configured URLs, the session starts private ones from the
installed server programs and stops them at the end; only when those programs are missing
does the run stop at once, with the commands that start the servers. SeaweedFS starts on
first use, only in sessions with a test on the S3 store.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session, sessionmaker

from api import create_app
from common.access.apikeys import create_programme
from common.db.engine import make_engine, make_sessionmaker
from common.db.schema import upgrade_to_head
from common.db.tables import Base, Image
from common.lifecycle.broker_marker import MARKER_KEY_PREFIX
from common.modelling.manifest import MANIFEST_NAME
from common.queue import GRADE_IMAGES_TASK
from common.settings import BUNDLED_MODEL, Settings
from common.storage import ObjectStore, open_store
from lab.synthetic import generate_fundus
from tests.support import (
    S3_BUCKET,
    missing_postgres_programs,
    postgres_problem,
    redis_binary,
    redis_problem,
    run_private_postgres,
    run_private_redis,
    run_private_s3,
    scratch_database,
)

if TYPE_CHECKING:
    from worker.ml.model import LoadedModel
    from worker.runtime import WorkerRuntime

DATABASE_URL_VARIABLE = "RETINAQ_TEST_DATABASE_URL"
REDIS_URL_VARIABLE = "RETINAQ_TEST_REDIS_URL"
DEFAULT_SERVER_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
START_HINT = (
    "start them with `docker compose up -d postgres redis`, or on Debian with\n"
    "  pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n"
    "  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no\n"
    "or point RETINAQ_TEST_DATABASE_URL / RETINAQ_TEST_REDIS_URL at running servers\n"
    "(with the postgresql and redis-server packages installed, the tests start their own)."
)


@dataclass(frozen=True)
class Services:
    """Where this session's PostgreSQL and Redis are, and what stops any private ones."""

    server_url: str
    redis_url: str
    private: ExitStack


SERVICES = pytest.StashKey[Services]()


def _use(variable: str, url: str, private: ExitStack) -> None:
    """Point ``variable`` at ``url`` for this run, so tests that start pytest agree with it."""
    previous = os.environ.get(variable)
    os.environ[variable] = url
    if previous is None:
        private.callback(os.environ.pop, variable, None)
    else:
        private.callback(os.environ.__setitem__, variable, previous)


def _start_services(report: Callable[[str], None]) -> Services:
    server_url = os.environ.get(DATABASE_URL_VARIABLE, DEFAULT_SERVER_URL)
    redis_url = os.environ.get(REDIS_URL_VARIABLE, DEFAULT_REDIS_URL)
    postgres_down, redis_down = postgres_problem(server_url), redis_problem(redis_url)
    problems = []
    if postgres_down and (missing := missing_postgres_programs()):
        problems.append(
            f"PostgreSQL at {server_url} does not answer ({postgres_down}),"
            f" and a private one cannot be started: {', '.join(missing)} not found"
        )
    if redis_down and redis_binary() is None:
        problems.append(
            f"Redis at {redis_url} does not answer ({redis_down}),"
            " and a private one cannot be started: redis-server not found"
        )
    if problems:
        pytest.exit("\n".join(problems) + "\nThe tests need both; " + START_HINT, returncode=3)
    private = ExitStack()
    try:
        if postgres_down:
            postgres = private.enter_context(run_private_postgres())
            report(
                f"PostgreSQL at {server_url} does not answer ({postgres_down}): this run uses"
                f" a private one at {postgres.url} (in {postgres.root})"
            )
            server_url = postgres.url
            _use(DATABASE_URL_VARIABLE, server_url, private)
        if redis_down:
            broker = private.enter_context(run_private_redis())
            report(
                f"Redis at {redis_url} does not answer ({redis_down}): this run uses"
                f" a private one at {broker.url}"
            )
            redis_url = broker.url
            _use(REDIS_URL_VARIABLE, redis_url, private)
    except (OSError, subprocess.SubprocessError, AssertionError) as exc:
        private.close()
        output = getattr(exc, "stderr", None) or b""
        pytest.exit(
            f"could not start a private server for the tests: {exc}\n"
            + output.decode(errors="replace")
            + START_HINT,
            returncode=3,
        )
    except BaseException:
        private.close()
        raise
    return Services(server_url, redis_url, private)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Find PostgreSQL and Redis, or start private ones, or stop with one clear message."""
    terminal = session.config.pluginmanager.get_plugin("terminalreporter")

    def report(line: str) -> None:
        if terminal is not None:
            terminal.write_line(line)

    session.config.stash[SERVICES] = _start_services(report)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop the private servers this session started, if any."""
    services = session.config.stash.get(SERVICES, None)
    if services is not None:
        services.private.close()


@pytest.fixture(scope="session")
def postgres_server_url(pytestconfig: pytest.Config) -> str:
    """The PostgreSQL server on which tests create their databases."""
    return pytestconfig.stash[SERVICES].server_url


@pytest.fixture(scope="session")
def database_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated with Alembic."""
    with scratch_database(postgres_server_url, "retinaq_test") as url:
        upgrade_to_head(url, quiet=True)
        yield url


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[Engine]:
    """The test session's engine."""
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def sessions(engine: Engine) -> sessionmaker[Session]:
    """Session factory on the test database."""
    return make_sessionmaker(engine)


@pytest.fixture(scope="session")
def redis_url(pytestconfig: pytest.Config) -> str:
    """The Redis the tests use as the Celery broker."""
    return pytestconfig.stash[SERVICES].redis_url


@pytest.fixture(scope="session")
def queue_name() -> str:
    """A queue of our own on the shared Redis, so parallel runs never steal each other's tasks."""
    return f"retinaq.test.{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A private SeaweedFS for the session, with the bucket ``S3_BUCKET``; its endpoint.

    The standard AWS variables point at it for the rest of the session, so the code under
    test (and any process a test starts) finds it the way a deployment does.
    """
    private = ExitStack()
    with private:
        server = private.enter_context(run_private_s3())
        server.create_bucket(S3_BUCKET)
        for variable, value in server.environment.items():
            _use(variable, value, private)
        yield server.endpoint


@pytest.fixture
def storage(request: pytest.FixtureRequest) -> str:
    """Which store a test's settings name: ``file`` unless a module parametrises it
    (``pytest.mark.parametrize("storage", STORES, indirect=True)``)."""
    return str(getattr(request, "param", "file"))


@pytest.fixture
def storage_url(storage: str, request: pytest.FixtureRequest) -> str:
    """An empty store of that kind: a folder of its own, or a prefix of its own in the bucket."""
    if storage == "s3":
        request.getfixturevalue("s3_server")
        return f"s3://{S3_BUCKET}/{uuid.uuid4().hex}"
    return ""


@pytest.fixture
def settings(
    database_url: str,
    redis_url: str,
    queue_name: str,
    bundled_model_path: Path,
    storage_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Settings:
    """Production-profile settings: PostgreSQL, Redis, a private image store."""
    var = tmp_path_factory.mktemp("var")
    return Settings(
        var_dir=var,
        database_url=database_url,
        broker_url=redis_url,
        storage_url=storage_url,
        storage_dir=None if storage_url else var / "images",
        queue_name=queue_name,
        heatmap_queue_name=f"{queue_name}.explain",
        grading_batch_size=8,
        task_size=8,
        batch_wait_ms=0,  # tests grade exactly the ids they name; gathering has its own test
        model_path=bundled_model_path,
        secret_key="test-secret-key-for-sealing-cursors",
    )


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A client on the test broker."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def queued_tasks(redis_client: redis.Redis, queue_name: str) -> Callable[[], list[list[str]]]:
    """The image-id lists of the grading tasks waiting in the real Redis queue."""

    def read() -> list[list[str]]:
        tasks = []
        for raw in redis_client.lrange(queue_name, 0, -1):
            message = json.loads(raw)
            assert message["headers"]["task"] == GRADE_IMAGES_TASK
            tasks.append(json.loads(base64.b64decode(message["body"]))[0][0])
        return tasks

    return read


@pytest.fixture(autouse=True)
def _clean_state(request: pytest.FixtureRequest) -> Iterator[None]:
    """Empty every table and the test queue after each test that touched them."""
    yield
    if "engine" in request.fixturenames:
        engine: Engine = request.getfixturevalue("engine")
        tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
        with engine.begin() as connection:
            connection.execute(text(f"TRUNCATE {tables} CASCADE"))
    if "queue_name" in request.fixturenames:
        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        name = request.getfixturevalue("queue_name")
        client.delete(name, f"{name}.explain", f"{MARKER_KEY_PREFIX}{name}")
        client.close()


@pytest.fixture
def make_app(settings: Settings, engine: Engine) -> Iterator[Callable[..., Flask]]:
    """Build API applications with settings overrides; their engines are disposed after."""
    apps: list[Flask] = []

    def make(**overrides: object) -> Flask:
        app = create_app(settings.model_copy(update=overrides))
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["retinaq"].engine.dispose()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    """The API application on the test database and broker."""
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client for HTTP-level tests."""
    return app.test_client()


@pytest.fixture
def make_programme(sessions: sessionmaker[Session]) -> Callable[[str], dict[str, str]]:
    """Create a programme and return Authorization headers for its key."""

    def make(name: str) -> dict[str, str]:
        with sessions.begin() as session:
            _, key = create_programme(session, name)
        return {"Authorization": f"Bearer {key.secret}"}

    return make


@pytest.fixture
def auth(make_programme: Callable[[str], dict[str, str]]) -> dict[str, str]:
    """Headers for a programme called "North"."""
    return make_programme("North")


@pytest.fixture(scope="session")
def fundus_jpeg() -> Callable[..., bytes]:
    """Deterministic synthetic fundus JPEG bytes for a grade and seed."""

    def make(grade: int = 0, seed: int = 0, size: int = 256) -> bytes:
        buffer = io.BytesIO()
        generate_fundus(grade, seed, size).save(buffer, format="JPEG", quality=90)
        return buffer.getvalue()

    return make


@pytest.fixture(scope="session")
def bundled_model_path() -> Path:
    """The model shipped in the repository (RETINAQ_TEST_MODEL_PATH tests another one)."""
    path = Path(os.environ.get("RETINAQ_TEST_MODEL_PATH", str(BUNDLED_MODEL)))
    assert path.is_file(), f"no model at {path}; see README (retinaq train)"
    return path


@pytest.fixture(scope="session")
def registry_model(bundled_model_path: Path) -> Callable[..., Path]:
    """Copy the bundled model into ``registry/name``, its manifest renamed and changed."""

    def make(registry: Path, name: str, **changes: object) -> Path:
        folder = registry / name
        folder.mkdir(parents=True)
        shutil.copy(bundled_model_path, folder / "model.keras")
        manifest = json.loads((bundled_model_path.parent / MANIFEST_NAME).read_text())
        (folder / MANIFEST_NAME).write_text(json.dumps({**manifest, "name": name, **changes}))
        return folder

    return make


@pytest.fixture(scope="session")
def loaded_model(bundled_model_path: Path) -> LoadedModel:
    """The bundled model, loaded once; TensorFlow is imported only by tests that ask for it."""
    from worker.ml.model import load_model

    return load_model(bundled_model_path, batch_size=8)


@pytest.fixture
def runtime(
    settings: Settings, sessions: sessionmaker[Session], loaded_model: LoadedModel
) -> WorkerRuntime:
    """A worker runtime on the test database and image store, for grading in-process."""
    from worker.runtime import WorkerRuntime

    return WorkerRuntime(settings, sessions, open_store(settings), loaded_model)


@pytest.fixture
def store(settings: Settings) -> ObjectStore:
    """The store the test's settings name, as the API and the worker open it."""
    return open_store(settings)


Submitted = tuple[dict[str, Any], list[uuid.UUID]]


@pytest.fixture
def submit(
    client: FlaskClient, auth: dict[str, str], sessions: sessionmaker[Session]
) -> Callable[..., Submitted]:
    """Submit images over HTTP (as ``auth`` unless told otherwise); the batch and its image ids."""

    def do(files: list[tuple[bytes, str]], headers: dict[str, str] | None = None) -> Submitted:
        parts = [(io.BytesIO(data), name) for data, name in files]
        response = client.post("/v1/batches", headers=headers or auth, data={"images": parts})
        assert response.status_code == 202, response.get_json()
        body = response.get_json()
        with sessions() as session:
            ids = session.scalars(
                select(Image.id).where(Image.batch_id == uuid.UUID(body["id"])).order_by(Image.id)
            ).all()
        return body, list(ids)

    return do
