"""A real worker process switches to the activated model between two batches, without a
restart, and keeps serving when an activated model cannot be loaded on its host."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cli.main import cli
from common.db.tables import FINISHED_BATCH_STATES, Batch, Result
from common.modelling.activation import activate_model
from common.modelling.manifest import MANIFEST_NAME, file_sha256
from common.settings import Settings, get_settings
from tests.cli.test_admin_operations import cli_environment
from tests.conftest import Submitted
from tests.support import REPO_ROOT, free_port, wait_for
from worker.model_switch import wanted_activation
from worker.runtime import WorkerRuntime

pytestmark = pytest.mark.slow


def _variant(folder: Path, version: str) -> str:
    """Make the model file in ``folder`` a different file that loads the same: an extra zip
    entry, ignored by Keras, and the manifest's hash and version to match; its SHA-256."""
    with zipfile.ZipFile(folder / "model.keras", "a") as archive:
        archive.writestr("retinaq-variant.txt", version)
    sha = file_sha256(folder / "model.keras")
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    (folder / MANIFEST_NAME).write_text(json.dumps({**manifest, "sha256": sha}))
    return sha


@pytest.fixture
def registry(tmp_path: Path, registry_model: Callable[..., Path]) -> Path:
    root = tmp_path / "models"
    registry_model(root, "screening-a", version="1.0.0")
    _variant(registry_model(root, "screening-b", version="2.0.0"), "2.0.0")
    registry_model(root, "screening-c", version="3.0.0")
    return root


@pytest.fixture
def environment(settings: Settings, registry: Path) -> dict[str, str]:
    """A worker's variables: the test's database, broker, queue and store, and the registry
    (no RETINAQ_MODEL_PATH: a pinned worker would never switch)."""
    env = {k: v for k, v in os.environ.items() if k != "RETINAQ_MODEL_PATH"}
    return {
        **env,
        **cli_environment(settings),
        "RETINAQ_MODELS_DIR": str(registry),
        "RETINAQ_MODEL_NAME": "screening-a",
        "RETINAQ_GRADING_BATCH_SIZE": str(settings.grading_batch_size),
        "RETINAQ_BATCH_WAIT_MS": "0",
        "RETINAQ_METRICS_PORT": str(free_port()),
        "RETINAQ_METRICS_HOST": "127.0.0.1",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def worker_log(environment: dict[str, str], tmp_path: Path) -> Iterator[Path]:
    """A ``retinaq worker`` process on the test queue; the path of its log."""
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cli",
                "worker",
                "--hostname",
                f"switch-{uuid.uuid4().hex[:6]}@%h",
            ],
            env=environment,
            cwd=REPO_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield log
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _activate(environment: dict[str, str], name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in ("RETINAQ_DATABASE_URL", "RETINAQ_MODELS_DIR", "RETINAQ_VAR_DIR"):
        monkeypatch.setenv(variable, environment[variable])
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["admin", "models", "activate", name])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output


def _served_model(environment: dict[str, str]) -> dict[str, str]:
    """The labels of the worker's ``retinaq_worker_model_info``, scraped from its metrics."""
    port = environment["RETINAQ_METRICS_PORT"]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name in ("retinaq_worker_model", "retinaq_worker_model_info"):
            return dict(family.samples[0].labels)
    raise AssertionError(f"no model info in {text}")


def _graded_by(
    sessions: sessionmaker[Session], batch_id: str, log: Path
) -> tuple[set[tuple[str, str, str]], tuple[str | None, bool]]:
    """Wait for the batch to finish; the models its results name, and the batch's model."""

    def finished() -> bool:
        assert "Traceback" not in log.read_text(errors="replace"), log.read_text()
        with sessions() as session:
            state = session.scalar(select(Batch.state).where(Batch.id == uuid.UUID(batch_id)))
        return state in FINISHED_BATCH_STATES

    wait_for(finished, 180, f"batch {batch_id} to finish", interval=0.3)
    with sessions() as session:
        models = set(
            session.execute(
                select(Result.model_name, Result.model_version, Result.model_sha256).where(
                    Result.batch_id == uuid.UUID(batch_id)
                )
            ).all()
        )
        batch = session.get(Batch, uuid.UUID(batch_id))
        assert batch is not None
        return {(n, v, s) for n, v, s in models}, (batch.model_name, batch.models_mixed)


def test_a_running_worker_switches_to_the_activated_model_between_batches(
    worker_log: Path,
    environment: dict[str, str],
    registry: Path,
    submit: Callable[..., Submitted],
    sessions: sessionmaker[Session],
    fundus_jpeg: Callable[..., bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sha_a = file_sha256(registry / "screening-a" / "model.keras")
    sha_b = file_sha256(registry / "screening-b" / "model.keras")
    assert sha_a != sha_b

    first, _ = submit([(fundus_jpeg(seed=i), f"a{i}.jpg") for i in range(3)])
    models, batch_model = _graded_by(sessions, first["id"], worker_log)
    assert models == {("screening-a", "1.0.0", sha_a)}
    assert batch_model == ("screening-a", False)

    _activate(environment, "screening-b", monkeypatch)
    second, _ = submit([(fundus_jpeg(seed=10 + i), f"b{i}.jpg") for i in range(3)])
    models, batch_model = _graded_by(sessions, second["id"], worker_log)
    assert models == {("screening-b", "2.0.0", sha_b)}
    assert batch_model == ("screening-b", False)
    log = worker_log.read_text(errors="replace")
    assert "switched model from screening-a 1.0.0 to screening-b 2.0.0" in log
    assert _served_model(environment) == {
        "name": "screening-b",
        "version": "2.0.0",
        "sha256": sha_b,
        "device": "CPU",
    }

    # Activated, then changed on this host before the worker loaded it: the worker refuses
    # the file it finds, says so once, and goes on grading with the model it holds.
    _activate(environment, "screening-c", monkeypatch)
    _variant(registry / "screening-c", "tampered after activation")
    third, _ = submit([(fundus_jpeg(seed=20 + i), f"c{i}.jpg") for i in range(2)])
    models, _ = _graded_by(sessions, third["id"], worker_log)
    assert models == {("screening-b", "2.0.0", sha_b)}
    fourth, _ = submit([(fundus_jpeg(seed=30), "d.jpg")])
    models, _ = _graded_by(sessions, fourth["id"], worker_log)
    assert models == {("screening-b", "2.0.0", sha_b)}
    log = worker_log.read_text(errors="replace")
    assert log.count("cannot be served here") == 1, log
    assert "but this host's copy" in log


def test_only_a_worker_not_pinned_to_a_file_wants_the_activated_model(
    runtime: WorkerRuntime, sessions: sessionmaker[Session], registry: Path, settings: Settings
) -> None:
    with sessions.begin() as session:
        activate_model(session, registry, "screening-b")
    # The fixture's settings name RETINAQ_MODEL_PATH: pinned to that file.
    assert wanted_activation(runtime) is None
    free = Settings(
        var_dir=settings.var_dir,
        database_url=settings.database_url,
        models_dir=registry,
        model_name="screening-a",
    )
    wanted = wanted_activation(dataclasses.replace(runtime, settings=free))
    assert wanted is not None and (wanted.name, wanted.version) == ("screening-b", "2.0.0")
