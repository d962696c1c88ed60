"""A heat map that cannot be drawn is logged by image id, never by the bytes' key or hash."""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Callable

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.db.tables import Image
from common.storage import ObjectStore
from worker.grading.heatmaps import make_heatmaps
from worker.grading.pipeline import grade_images
from worker.runtime import WorkerRuntime


def test_a_missing_photograph_is_logged_without_its_storage_key(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    runtime: WorkerRuntime,
    sessions: sessionmaker[Session],
    store: ObjectStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    parts = [(io.BytesIO(fundus_jpeg(grade=4, seed=9)), "eye.jpg")]
    response = client.post("/v1/batches", headers=auth, data={"images": parts, "explain": "true"})
    assert response.status_code == 202, response.get_json()
    with sessions() as session:
        image = session.scalars(select(Image)).one()
    grade_images(runtime, [image.id])
    assert store.remove(image.sha256)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="worker.grading.heatmaps"):
        assert make_heatmaps(runtime, [uuid.UUID(str(image.id))]) == 0
    [record] = [r for r in caplog.records if r.name == "worker.grading.heatmaps"]
    line = record.getMessage()
    assert str(image.id) in line and "missing_file" in line
    assert image.sha256 not in line and image.sha256[:2] + "/" not in line
