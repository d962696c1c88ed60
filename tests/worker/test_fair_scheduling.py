"""Fair shares between programmes, as a programme meets them: a small batch submitted over
HTTP behind another programme's backlog is graded by a real worker within a few
micro-batches, not after the backlog the broker holds ahead of its task."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import REPO_ROOT, free_port, running_stack, wait_for

pytestmark = pytest.mark.slow

BACKLOG = 400
MICRO_BATCH = 8


@pytest.fixture
def api_and_env(
    database_url: str,
    redis_url: str,
    queue_name: str,
    bundled_model_path: Path,
    tmp_path: Path,
) -> Iterator[tuple[str, dict[str, str]]]:
    """The API alone (so a backlog can build up); the environment a worker needs."""
    env = {
        **os.environ,
        "RETINAQ_VAR_DIR": str(tmp_path),
        "RETINAQ_DATABASE_URL": database_url,
        "RETINAQ_BROKER_URL": redis_url,
        "RETINAQ_STORAGE_URL": (tmp_path / "images").as_uri(),
        "RETINAQ_QUEUE_NAME": queue_name,
        "RETINAQ_HEATMAP_QUEUE_NAME": f"{queue_name}.explain",
        "RETINAQ_MODEL_PATH": str(bundled_model_path),
        "RETINAQ_GRADING_BATCH_SIZE": str(MICRO_BATCH),
        "RETINAQ_TASK_SIZE": str(MICRO_BATCH),
        "RETINAQ_SECRET_KEY": "fair-scheduling-secret-key-for-cursors",
        "PYTHONUNBUFFERED": "1",
    }
    port = free_port()
    api = [sys.executable, "-m", "cli", "api", "--port", str(port), "--workers", "2"]
    base_url = f"http://127.0.0.1:{port}"
    with running_stack({"api": (api, REPO_ROOT)}, env, tmp_path, f"{base_url}/readyz"):
        yield base_url, env


def test_a_small_batch_is_not_held_behind_another_programmes_backlog(
    api_and_env: tuple[str, dict[str, str]],
    make_programme: Callable[[str], dict[str, str]],
    fundus_jpeg: Callable[..., bytes],
    tmp_path: Path,
) -> None:
    base_url, env = api_and_env
    national = make_programme("National programme")
    clinic = make_programme("Small clinic")
    with httpx.Client(base_url=base_url, timeout=120) as http:
        opened = http.post("/v1/batches", json={"open": True}, headers=national).json()
        for start in range(0, BACKLOG, 100):
            files = [
                ("images", (f"n{i}.jpg", fundus_jpeg(seed=i, size=128), "image/jpeg"))
                for i in range(start, start + 100)
            ]
            added = http.post(opened["links"]["add_images"], files=files, headers=national)
            assert added.status_code == 202, added.text
        assert http.post(opened["links"]["close"], headers=national).status_code == 200
        backlog_url = opened["links"]["self"]

        log = tmp_path / "worker.log"
        with log.open("wb") as output:
            worker = subprocess.Popen(
                [sys.executable, "-m", "cli", "worker", "--hostname", f"fair-{os.getpid()}@%h"],
                env=env,
                cwd=REPO_ROOT,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
            try:
                wait_for(lambda: " ready." in log.read_text(), 120, "the worker", interval=0.2)
                files = [
                    ("images", (f"c{i}.jpg", fundus_jpeg(seed=1000 + i, size=128), "image/jpeg"))
                    for i in range(5)
                ]
                sent = time.monotonic()
                created = http.post("/v1/batches", files=files, headers=clinic)
                assert created.status_code == 202, created.text

                def small_batch_done() -> bool:
                    state = http.get(created.headers["Location"], headers=clinic).json()["state"]
                    return str(state) == "completed"

                wait_for(small_batch_done, 120, "the small batch", interval=0.05)
                waited = time.monotonic() - sent
                backlog = http.get(backlog_url, headers=national).json()
            finally:
                worker.terminate()
                worker.wait(60)
    pending = backlog["counts"]["queued"] + backlog["counts"]["processing"]
    # First come, first served would have graded all 400 first: 50 tasks stood ahead of
    # the clinic's in the broker. In turn, it waits for the micro-batch being graded and
    # the one already decoding, so most of the backlog is still waiting.
    assert pending >= BACKLOG // 2, (waited, backlog["counts"])
    assert backlog["state"] == "processing"
    print(f"small batch graded in {waited:.2f} s with {pending} backlog images pending")
