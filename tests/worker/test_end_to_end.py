"""End to end on the production profile: gunicorn API + a real Celery worker process,
real Redis, real PostgreSQL, images submitted over HTTP and followed by their Location."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from common.modelling.manifest import read_manifest
from tests.support import REPO_ROOT, free_port, running_stack, wait_batch_finished, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live_stack(
    database_url: str,
    redis_url: str,
    queue_name: str,
    bundled_model_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """Start the API server and a worker as child processes; yield the API's base URL."""

    var = tmp_path_factory.mktemp("stack")
    env = {
        **os.environ,
        "RETINAQ_VAR_DIR": str(var),
        "RETINAQ_DATABASE_URL": database_url,
        "RETINAQ_BROKER_URL": redis_url,
        "RETINAQ_STORAGE_DIR": str(var / "images"),
        "RETINAQ_QUEUE_NAME": queue_name,
        "RETINAQ_HEATMAP_QUEUE_NAME": f"{queue_name}.explain",
        "RETINAQ_MODEL_PATH": str(bundled_model_path),
        "RETINAQ_GRADING_BATCH_SIZE": "8",
        "RETINAQ_TASK_SIZE": "8",
        "RETINAQ_STATUS_RETRY_AFTER_S": "1",
        "RETINAQ_SECRET_KEY": "end-to-end-secret-key-for-cursors",
        "PYTHONUNBUFFERED": "1",
    }
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    commands = {
        "api": (
            [sys.executable, "-m", "cli", "api", "--port", str(port), "--workers", "2"],
            REPO_ROOT,
        ),
        "worker": (
            [sys.executable, "-m", "cli", "worker", "--hostname", f"e2e-{port}@%h"],
            REPO_ROOT,
        ),
    }
    with running_stack(commands, env, var, f"{base_url}/readyz"):
        yield base_url


def test_http_submission_is_graded_by_the_worker_with_the_bundled_model(
    live_stack: str,
    make_programme: Callable[[str], dict[str, str]],
    fundus_jpeg: Callable[..., bytes],
    bundled_model_path: Path,
) -> None:
    headers = make_programme("End to end")
    files = [
        ("images", (f"eye{i:02d}.jpg", fundus_jpeg(grade=i % 5, seed=100 + i), "image/jpeg"))
        for i in range(20)
    ]
    with httpx.Client(base_url=live_stack, headers=headers, timeout=60) as http:
        response = http.post("/v1/batches", files=files)
        assert response.status_code == 202, response.text
        status_url = response.headers["Location"]
        assert status_url.startswith(live_stack)
        status = wait_batch_finished(http, status_url)
        assert status["state"] == "completed"
        assert status["counts"]["graded"] == 20
        assert sum(status["grades"].values()) == 20

        rows = http.get(status["links"]["results"], params={"limit": 50}).json()["items"]
    manifest = read_manifest(bundled_model_path)
    assert [r["filename"] for r in rows] == [f"eye{i:02d}.jpg" for i in range(20)]
    assert {r["model"]["sha256"] for r in rows} == {manifest.sha256}
    assert all(r["state"] == "graded" for r in rows)


def test_a_batch_that_asks_for_explanations_gets_heat_maps_from_the_worker(
    live_stack: str,
    make_programme: Callable[[str], dict[str, str]],
    fundus_jpeg: Callable[..., bytes],
) -> None:
    headers = make_programme("Explained")
    files = [
        ("images", (f"eye{g}.jpg", fundus_jpeg(grade=g, seed=300 + g), "image/jpeg"))
        for g in (0, 4)
    ]
    with httpx.Client(base_url=live_stack, headers=headers, timeout=60) as http:
        response = http.post("/v1/batches", files=files, data={"explain": "true"})
        assert response.status_code == 202, response.text
        status = wait_batch_finished(http, response.headers["Location"])
        assert status["explain"] is True and status["model"]["name"]

        def results() -> list[dict]:
            return http.get(status["links"]["results"]).json()["items"]

        wait_for(
            lambda: all(r["links"]["heatmap"] for r in results()), 120, "heat maps", interval=0.5
        )
        for row in results():
            heatmap = http.get(row["links"]["heatmap"])
            assert heatmap.status_code == 200
            assert heatmap.headers["content-type"] == "image/png"
            assert heatmap.content.startswith(b"\x89PNG")


def test_cli_submit_waits_and_writes_the_csv(
    live_stack: str,
    make_programme: Callable[[str], dict[str, str]],
    tmp_path: Path,
) -> None:
    key = make_programme("CLI").get("Authorization", "").removeprefix("Bearer ")
    out = tmp_path / "results.csv"
    samples = REPO_ROOT / "samples"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "submit",
            str(samples),
            "--metadata",
            str(samples / "metadata.csv"),
            "--chunk-size",
            "7",
            "--wait",
            "--out",
            str(out),
        ],
        env={**os.environ, "RETINAQ_API_URL": live_stack, "RETINAQ_API_KEY": key},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip().startswith(f"{live_stack}/v1/batches/")
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    sample_count = len(list(samples.glob("*.jpg")))
    assert len(rows) == sample_count
    assert all(r["state"] == "graded" and r["grade"] in "01234" for r in rows)
    assert all(r["patient_id"].startswith("P") and r["laterality"] in ("L", "R") for r in rows)

    env = {**os.environ, "RETINAQ_API_URL": live_stack, "RETINAQ_API_KEY": key}
    status_url = completed.stdout.strip()
    shown = subprocess.run(
        [sys.executable, "-m", "cli", "status", status_url],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "completed" in shown.stdout
    assert f"graded={sample_count}" in shown.stdout
    table = subprocess.run(
        [sys.executable, "-m", "cli", "results", status_url.rsplit("/", 1)[-1]],
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert table.returncode == 0, table.stderr
    assert all(r["filename"] in table.stdout for r in rows)
    denied = subprocess.run(
        [sys.executable, "-m", "cli", "status", status_url],
        env={**env, "RETINAQ_API_KEY": "rq_wrong"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert denied.returncode == 1
    assert "invalid_api_key" in denied.stderr
