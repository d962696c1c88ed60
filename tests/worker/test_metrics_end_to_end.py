"""Metrics as an operator meets them: a real batch through gunicorn (two processes) and a
real solo worker, both ``/metrics`` scraped and parsed, every counter moved by exactly the
batch's numbers."""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.db.tables import Programme
from lab.synthetic import generate_fundus
from tests.scraping import Samples, parse_exposition, sample_value, summed
from tests.support import REPO_ROOT, free_port, running_stack, wait_for_port

pytestmark = pytest.mark.slow

STAGES = ("claim", "stage", "decode_wait", "infer", "write")


class Stack:
    """Where the stack's API and worker metrics answer."""

    def __init__(self, api: str, worker: str, metrics_dir: Path) -> None:
        self.api = api
        self.worker = worker
        self.metrics_dir = metrics_dir

    def scrape_api(self) -> Samples:
        response = httpx.get(f"{self.api}/metrics", timeout=10)
        assert response.status_code == 200
        return parse_exposition(response.text)

    def scrape_worker(self) -> Samples:
        response = httpx.get(f"{self.worker}/metrics", timeout=10)
        assert response.status_code == 200
        return parse_exposition(response.text)


@pytest.fixture(scope="module")
def stack(
    database_url: str,
    redis_url: str,
    queue_name: str,
    bundled_model_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """gunicorn with two processes and a solo worker serving metrics on a port of its own."""
    var = tmp_path_factory.mktemp("metrics-stack")
    metrics_dir = var / "api-metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"left by a former run")
    api_port, worker_port = free_port(), free_port()
    env = {
        **os.environ,
        "RETINAQ_VAR_DIR": str(var),
        "RETINAQ_DATABASE_URL": database_url,
        "RETINAQ_BROKER_URL": redis_url,
        "RETINAQ_STORAGE_DIR": str(var / "images"),
        "RETINAQ_QUEUE_NAME": queue_name,
        "RETINAQ_HEATMAP_QUEUE_NAME": f"{queue_name}.explain",
        "RETINAQ_MODEL_PATH": str(bundled_model_path),
        "RETINAQ_GRADING_BATCH_SIZE": "4",
        "RETINAQ_TASK_SIZE": "4",
        "RETINAQ_STATUS_RETRY_AFTER_S": "1",
        "RETINAQ_SECRET_KEY": "metrics-end-to-end-secret-key",
        "RETINAQ_API_METRICS_DIR": str(metrics_dir),
        "RETINAQ_METRICS_PORT": str(worker_port),
        "RETINAQ_METRICS_HOST": "127.0.0.1",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    api = f"http://127.0.0.1:{api_port}"
    commands = {
        "api": (
            [sys.executable, "-m", "cli", "api", "--port", str(api_port), "--workers", "2"],
            REPO_ROOT,
        ),
        "worker": (
            [sys.executable, "-m", "cli", "worker", "--hostname", f"metrics-{api_port}@%h"],
            REPO_ROOT,
        ),
    }
    with running_stack(commands, env, var, f"{api}/readyz"):
        # The worker's server starts with the worker, before its model loads.
        wait_for_port(worker_port, 120, "the worker's metrics server")
        yield Stack(api, f"http://127.0.0.1:{worker_port}", metrics_dir)


def _jpeg(image: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)  # type: ignore[attr-defined]
    return buffer.getvalue()


def test_a_batch_moves_the_api_and_worker_counters_by_exactly_its_numbers(
    stack: Stack,
    make_programme: Callable[[str], dict[str, str]],
    sessions: sessionmaker[Session],
) -> None:
    headers = make_programme("Metered")
    with sessions() as session:
        programme = str(
            session.scalars(select(Programme.id).where(Programme.name == "Metered")).one()
        )
    gradable = [_jpeg(generate_fundus(g % 5, 500 + g, 256)) for g in range(5)]
    grey = _jpeg(generate_fundus(1, 11, 256).convert("L"))  # a colour model cannot grade it
    noise = np.random.default_rng(7).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    files = [("images", (f"eye{i}.jpg", data, "image/jpeg")) for i, data in enumerate(gradable)]
    files += [
        ("images", ("grey.jpg", grey, "image/jpeg")),
        ("images", ("noise.jpg", noise, "image/jpeg")),
    ]

    api_before, worker_before = stack.scrape_api(), stack.scrape_worker()
    assert not (stack.metrics_dir / "counter_1.db").exists()  # emptied at start
    with httpx.Client(base_url=stack.api, headers=headers, timeout=60) as http:
        response = http.post("/v1/batches", files=files)
        assert response.status_code == 202, response.text
        status_url = response.headers["Location"]
        polls = 0
        deadline = time.monotonic() + 180
        while True:
            # The worker answers its liveness probe at once, busy or not.
            assert httpx.get(f"{stack.worker}/healthz", timeout=2).status_code == 200
            final = http.get(status_url).json()
            polls += 1
            if final["state"].startswith("completed"):
                break
            assert time.monotonic() < deadline, final
            time.sleep(0.3)
        rows = {r["filename"]: r for r in http.get(final["links"]["results"]).json()["items"]}
    assert final["counts"]["graded"] == 5
    assert rows["grey.jpg"]["ungradable_reasons"][0] == "not_fundus"
    assert rows["noise.jpg"]["error"]["code"] == "not_an_image"

    api_after, worker_after = stack.scrape_api(), stack.scrape_worker()

    def api_moved(name: str, **labels: str) -> float:
        return sample_value(api_after, name, **labels) - sample_value(api_before, name, **labels)

    def worker_moved(name: str, **labels: str) -> float:
        return sample_value(worker_after, name, **labels) - sample_value(
            worker_before, name, **labels
        )

    # The API: two gunicorn processes, one sum.
    assert api_moved("retinaq_api_ingested_images_total") == 7
    assert api_moved("retinaq_api_ingested_bytes_total") == sum(len(d) for _, (_, d, _) in files)
    count = "retinaq_api_request_duration_seconds_count"
    assert api_moved(count, route="/v1/batches", method="POST", status="202") == 1
    assert (
        api_moved(count, route="/v1/batches/<uuid:batch_id>", method="GET", status="200") == polls
    )
    assert sample_value(api_after, "retinaq_queue_pending_images", programme_id=programme) == 0
    assert sample_value(api_after, "retinaq_queue_up") == 1

    # The worker: 5 graded, 1 ungradable (not_fundus), 1 failed (not_an_image).
    images = "retinaq_worker_images_total"
    assert worker_moved(images, programme_id=programme, outcome="graded", reason="") == 5
    assert (
        worker_moved(images, programme_id=programme, outcome="ungradable", reason="not_fundus") == 1
    )
    assert (
        worker_moved(images, programme_id=programme, outcome="failed", reason="not_an_image") == 1
    )
    assert summed(worker_after, images) - summed(worker_before, images) == 7
    assert worker_moved("retinaq_worker_ungradable_reasons_total", reason="not_fundus") == 1
    batches = worker_moved("retinaq_worker_micro_batch_images_count")
    assert worker_moved("retinaq_worker_micro_batch_images_sum") == 7 and batches >= 2
    for stage in STAGES:
        assert worker_moved("retinaq_worker_stage_seconds_count", stage=stage) == batches
    assert worker_moved("retinaq_worker_stage_seconds_sum", stage="infer") > 0
    (model,) = [labels for name, labels in worker_after if name == "retinaq_worker_model_info"]
    assert dict(model)["name"] == final["model"]["name"]
    assert dict(model)["sha256"] == final["model"]["sha256"]
    assert dict(model)["device"] == "CPU"
    assert 0 <= sample_value(worker_after, "retinaq_worker_heartbeat_age_seconds") < 30
