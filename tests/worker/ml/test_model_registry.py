"""Switching models is a setting: each batch records the model that graded it."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from pathlib import Path

from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.db.tables import Image, Result
from common.settings import Settings
from worker.grading.pipeline import grade_images
from worker.ml.model import load_model
from worker.runtime import WorkerRuntime


def _worker_serving(
    name: str, version: str, runtime: WorkerRuntime, registry: Path, make: Callable[..., Path]
) -> WorkerRuntime:
    """A second worker, on the same database and store, serving registry model ``name``."""
    make(registry, name, version=version)
    fields = runtime.settings.model_dump(exclude={"model_path"})
    switched = Settings(**{**fields, "models_dir": registry, "model_name": name})
    assert switched.model_file == registry / name / "model.keras"
    model = load_model(switched.model_file, batch_size=8)
    return WorkerRuntime(switched, runtime.sessions, runtime.store, model)


def _submit(client: FlaskClient, auth: dict[str, str], images: list[bytes]) -> dict:
    files = [(io.BytesIO(data), f"{i}.jpg") for i, data in enumerate(images)]
    return client.post("/v1/batches", headers=auth, data={"images": files}).get_json()


def test_changing_the_served_model_between_batches_needs_no_code_change(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    runtime: WorkerRuntime,
    sessions: sessionmaker[Session],
    registry_model: Callable[..., Path],
    tmp_path: Path,
) -> None:
    first = _submit(client, auth, [fundus_jpeg(grade=1, seed=s) for s in (1, 2)])
    with sessions() as session:
        ids = session.scalars(select(Image.id).where(Image.batch_id == uuid.UUID(first["id"])))
        grade_images(runtime, list(ids))

    registry = tmp_path / "models"
    second_worker = _worker_serving("screening-v2", "2.0.0", runtime, registry, registry_model)
    second = _submit(client, auth, [fundus_jpeg(grade=3, seed=s) for s in (3, 4)])
    with sessions() as session:
        ids = session.scalars(select(Image.id).where(Image.batch_id == uuid.UUID(second["id"])))
        grade_images(second_worker, list(ids))

    one = client.get(first["links"]["self"], headers=auth).get_json()["model"]
    two = client.get(second["links"]["self"], headers=auth).get_json()["model"]
    manifest = runtime.model.manifest
    assert (one["name"], one["version"], one["mixed"]) == (manifest.name, manifest.version, False)
    assert (two["name"], two["version"], two["mixed"]) == ("screening-v2", "2.0.0", False)
    with sessions() as session:
        names = session.execute(select(Result.batch_id, Result.model_name)).all()
    assert {(str(b), n) for b, n in names} == {
        (first["id"], runtime.model.manifest.name),
        (second["id"], "screening-v2"),
    }


def test_a_model_switched_mid_batch_marks_the_batch_mixed(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    runtime: WorkerRuntime,
    sessions: sessionmaker[Session],
    registry_model: Callable[..., Path],
    tmp_path: Path,
) -> None:
    batch = _submit(client, auth, [fundus_jpeg(grade=g, seed=10 + g) for g in (0, 2, 4)])
    with sessions() as session:
        ids = list(
            session.scalars(
                select(Image.id).where(Image.batch_id == uuid.UUID(batch["id"])).order_by(Image.id)
            )
        )
    grade_images(runtime, ids[:1])
    before = client.get(batch["links"]["self"], headers=auth).get_json()["model"]
    assert before["mixed"] is False

    registry = tmp_path / "models"
    upgraded = _worker_serving("screening-v3", "3.0.0", runtime, registry, registry_model)
    grade_images(upgraded, ids[1:])

    status = client.get(batch["links"]["self"], headers=auth).get_json()
    manifest = runtime.model.manifest
    # the first worker's model still names the batch; "mixed" says another one took part
    assert status["model"] == {
        "name": manifest.name,
        "version": manifest.version,
        "sha256": manifest.sha256,
        "mixed": True,
    }
    rows = client.get(status["links"]["results"], headers=auth).get_json()["items"]
    assert sorted(row["model"]["name"] for row in rows) == sorted(
        [manifest.name, "screening-v3", "screening-v3"]
    )
