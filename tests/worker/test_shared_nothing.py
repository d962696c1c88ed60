"""Nodes that share no disk: the API and a worker started as processes in different working
directories, with nothing in common but PostgreSQL, Redis and an S3 bucket (a private
SeaweedFS), grade a batch with heat maps. Nothing reads a path the API wrote.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from common.settings import Settings
from common.storage import open_store
from tests.support import (
    S3_BUCKET,
    free_port,
    running_stack,
    stored_files,
    temporaries,
    wait_batch_finished,
    wait_for,
)

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Nodes:
    """Where the two nodes run, and the API's base URL."""

    base_url: str
    storage_url: str
    api_dir: Path
    worker_dir: Path


def _node_environment(common: dict[str, str]) -> dict[str, str]:
    """This environment without any RETINAQ_ setting, plus what the nodes share."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("RETINAQ_")}
    return {**inherited, **common, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def nodes(
    s3_server: str,
    database_url: str,
    redis_url: str,
    queue_name: str,
    bundled_model_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Nodes]:
    """An API node and a worker node, each in its own folder, each with its own ./var."""
    root = tmp_path_factory.mktemp("nodes")
    api_dir, worker_dir = root / "api-node", root / "worker-node"
    api_dir.mkdir()
    worker_dir.mkdir()
    storage_url = f"s3://{S3_BUCKET}/shared-nothing-{uuid.uuid4().hex[:8]}"
    env = _node_environment(
        {
            "RETINAQ_DATABASE_URL": database_url,
            "RETINAQ_BROKER_URL": redis_url,
            "RETINAQ_STORAGE_URL": storage_url,
            "RETINAQ_QUEUE_NAME": queue_name,
            "RETINAQ_HEATMAP_QUEUE_NAME": f"{queue_name}.explain",
            "RETINAQ_MODEL_PATH": str(bundled_model_path),
            "RETINAQ_GRADING_BATCH_SIZE": "8",
            "RETINAQ_TASK_SIZE": "8",
            "RETINAQ_STATUS_RETRY_AFTER_S": "1",
            "RETINAQ_SECRET_KEY": "shared-nothing-secret-key-for-cursors",
        }
    )
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    commands = {
        "api-node": (
            [sys.executable, "-m", "cli", "api", "--port", str(port), "--workers", "1"],
            api_dir,
        ),
        "worker-node": (
            [sys.executable, "-m", "cli", "worker", "--hostname", f"node-{port}@%h"],
            worker_dir,
        ),
    }
    with running_stack(commands, env, root, f"{base_url}/readyz"):
        yield Nodes(base_url, storage_url, api_dir, worker_dir)


def _files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_a_worker_sharing_no_disk_with_the_api_grades_and_draws_heat_maps(
    nodes: Nodes,
    make_programme: Callable[[str], dict[str, str]],
    fundus_jpeg: Callable[..., bytes],
    tmp_path: Path,
) -> None:
    headers = make_programme("Two hosts")
    photos = {f"eye{g}.jpg": fundus_jpeg(grade=g, seed=500 + g) for g in (0, 2, 4)}
    files = [("images", (name, data, "image/jpeg")) for name, data in photos.items()]
    with httpx.Client(base_url=nodes.base_url, headers=headers, timeout=60) as http:
        response = http.post("/v1/batches", files=files, data={"explain": "true"})
        assert response.status_code == 202, response.text
        status = wait_batch_finished(http, response.headers["Location"])
        assert (status["state"], status["counts"]["graded"]) == ("completed", 3)

        def results() -> list[dict]:
            return list(http.get(status["links"]["results"]).json()["items"])

        wait_for(
            lambda: all(r["links"]["heatmap"] for r in results()), 120, "heat maps", interval=0.5
        )
        heatmaps = [http.get(row["links"]["heatmap"]) for row in results()]
    assert [h.status_code for h in heatmaps] == [200, 200, 200]
    assert all(h.content.startswith(b"\x89PNG") for h in heatmaps)

    # Every byte went to the bucket: three photographs and three heat maps, nothing staged.
    store = open_store(Settings(var_dir=tmp_path, storage_url=nodes.storage_url))
    assert len(list(store.objects())) == 6, stored_files(store)
    assert temporaries(store) == []
    assert {store.read(store.relative_path(h.headers["ETag"].strip('"'))) for h in heatmaps} == {
        h.content for h in heatmaps
    }
    # Neither node keeps image bytes on its disk: the API's spool is empty, the worker has
    # no store folder at all.
    assert _files_under(nodes.api_dir / "var" / "spool") == []
    assert not (nodes.api_dir / "var" / "images").exists()
    assert not (nodes.worker_dir / "var" / "images").exists()
