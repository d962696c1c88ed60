"""``retinaq submit`` while the API is killed (``kill -9`` of gunicorn and its workers) and
restarted half way through the upload: every file ends in the batch once and is graded once.

The production profile runs as real processes: gunicorn, a Celery worker with the bundled
model and the reconciler, on the session's PostgreSQL and Redis. The CLI runs as a
subprocess. The test stops the API's process group (SIGSTOP) as soon as a few images are
in, so the kill lands mid-upload, kills it, and starts a new API on the same port: once
with the client's retries alone to ride it out, once with the client giving up and
``--resume`` finishing the batch. The first run sends DICOM files (the issue's closing
check), the second JPEGs.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from cli.journal import JOURNAL_NAME
from common.db.tables import Image, Result
from lab.synthetic import generate_fundus
from tests.dicom_files import dicom_bytes
from tests.support import (
    REPO_ROOT,
    free_port,
    log_tails,
    stop_process_groups,
    wait_batch_finished,
    wait_for,
)

pytestmark = pytest.mark.slow

FILES = 20
KILL_AFTER = 5  # images in the batch when the API is stopped and killed


@dataclass
class RestartableStack:
    """gunicorn (restartable, in a process group of its own), a worker and the reconciler."""

    env: dict[str, str]
    log_dir: Path
    port: int
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    starts: int = 0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self, name: str, argv: list[str]) -> None:
        self.starts += 1
        with (self.log_dir / f"{name}-{self.starts}.log").open("wb") as log:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "cli", *argv],
                env=self.env,
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: kill -9 reaches gunicorn's workers
            )

    def start_api(self) -> None:
        self.spawn("api", ["api", "--port", str(self.port), "--workers", "2"])
        wait_for(self._ready, 90, "the API to answer", interval=0.3)

    def _ready(self) -> bool:
        assert self.processes["api"].poll() is None, self.logs()
        try:
            return httpx.get(f"{self.api_url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def kill_api_mid_upload(self, images_in: Callable[[], int]) -> None:
        """Freeze the API once ``KILL_AFTER`` images are in (so requests are in flight), then
        ``kill -9`` gunicorn and its workers."""
        wait_for(lambda: images_in() >= KILL_AFTER, 120, "the upload to begin", interval=0.02)
        group = self.processes["api"].pid
        os.killpg(group, signal.SIGSTOP)
        time.sleep(0.5)
        os.killpg(group, signal.SIGKILL)
        self.processes["api"].wait(timeout=20)

    def logs(self) -> str:
        return log_tails(self.log_dir)

    def stop(self) -> None:
        stop_process_groups(self.processes.values())


@pytest.fixture(scope="module")
def stack(
    database_url: str,
    redis_url: str,
    queue_name: str,
    bundled_model_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RestartableStack]:
    """The stack, with the reconciler re-sending queued work after seconds (an API killed
    between its commit and its enqueue leaves images queued with no task) and a key
    reserved by a killed request released after seconds."""
    var = tmp_path_factory.mktemp("restart")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RETINAQ_")},
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
        "RETINAQ_REQUEUE_AFTER_S": "5",
        "RETINAQ_RECONCILE_INTERVAL_S": "2",
        # A request killed inside the view leaves its Idempotency-Key reserved; the API
        # releases it after this (15 minutes by default), and the client's retry redoes it.
        "RETINAQ_IDEMPOTENCY_ABANDONED_AFTER_S": "5",
        "RETINAQ_SECRET_KEY": "restart-secret-key-for-cursors",
        "PYTHONUNBUFFERED": "1",
    }
    logs = var / "logs"
    logs.mkdir()
    running = RestartableStack(env, logs, free_port())
    try:
        running.spawn("worker", ["worker", "--hostname", f"restart-{running.port}@%h"])
        running.spawn("reconciler", ["reconcile"])
        running.start_api()
        yield running
    finally:
        running.stop()


def _names(suffix: str) -> list[str]:
    return [f"P{i // 2:03d}/{'left' if i % 2 == 0 else 'right'}{suffix}" for i in range(FILES)]


@pytest.fixture
def jpeg_folder(fundus_jpeg: Callable[..., bytes], tmp_path: Path) -> Path:
    """Twenty photographs, a folder per patient."""
    root = tmp_path / "screening"
    for i, name in enumerate(_names(".jpg")):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(fundus_jpeg(grade=i % 5, seed=900 + i, size=384))
    return root


@pytest.fixture
def dicom_folder(tmp_path: Path) -> Path:
    """Twenty DICOM photographs (JPEG baseline and uncompressed), a folder per patient,
    the patient and eye in each header."""
    root = tmp_path / "dicom"
    for i, name in enumerate(_names(".dcm")):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        syntax = JPEGBaseline8Bit if i % 2 else ExplicitVRLittleEndian
        photograph = generate_fundus(i % 5, 950 + i, 384)
        data = dicom_bytes(photograph, syntax, patient_id=name[:4], laterality="LR"[i % 2])
        (root / name).write_bytes(data)
    return root


def _cli(stack: RestartableStack, key: str, argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cli", *argv],
        env={**stack.env, "RETINAQ_API_URL": stack.api_url, "RETINAQ_API_KEY": key},
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _images_in(sessions: sessionmaker[Session]) -> Callable[[], int]:
    def count() -> int:
        with sessions() as session:
            return session.scalar(select(func.count()).select_from(Image)) or 0

    return count


def _graded_exactly_once(
    headers: dict[str, str], sessions: sessionmaker[Session], url: str, suffix: str
) -> list[dict[str, Any]]:
    with httpx.Client(headers=headers, timeout=30) as http:
        status = wait_batch_finished(http, url, timeout=240)
        rows = http.get(status["links"]["results"], params={"limit": 100}).json()["items"]
    assert status["state"] == "completed", status
    assert status["image_count"] == FILES and status["counts"]["graded"] == FILES, status
    assert sorted(r["filename"] for r in rows) == sorted(_names(suffix)), "each file once"
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Image)) == FILES
        assert session.scalar(select(func.count()).select_from(Result)) == FILES
        assert session.scalar(select(func.count(func.distinct(Result.image_id)))) == FILES
    return rows


def test_the_retries_alone_ride_out_an_api_killed_and_restarted_mid_upload(
    stack: RestartableStack,
    make_programme: Callable[[str], dict[str, str]],
    sessions: sessionmaker[Session],
    dicom_folder: Path,
) -> None:
    folder = dicom_folder
    headers = make_programme("Restart")
    key = headers["Authorization"].removeprefix("Bearer ")
    argv = ["submit", str(folder), "--chunk-size", "1", "--attempts", "60", "--max-wait", "2"]
    client = _cli(stack, key, argv)
    stack.kill_api_mid_upload(_images_in(sessions))
    stack.start_api()
    out, err = client.communicate(timeout=180)
    assert client.returncode == 0, err + stack.logs()
    assert "retrying in" in err, err
    rows = _graded_exactly_once(headers, sessions, out.strip(), ".dcm")
    strays = [
        (row["filename"], row["patient_id"])
        for row in rows
        if row["patient_id"] != row["filename"][:4]
    ]
    assert not strays, f"patient ids not from the headers: {strays}\n{err}\n{stack.logs()}"
    assert not (folder / JOURNAL_NAME).exists()


def test_resume_finishes_a_batch_left_open_by_an_api_killed_mid_upload(
    stack: RestartableStack,
    make_programme: Callable[[str], dict[str, str]],
    sessions: sessionmaker[Session],
    jpeg_folder: Path,
) -> None:
    folder = jpeg_folder
    headers = make_programme("Resume")
    key = headers["Authorization"].removeprefix("Bearer ")
    argv = ["submit", str(folder), "--chunk-size", "1", "--attempts", "2", "--max-wait", "0.2"]
    client = _cli(stack, key, argv)
    stack.kill_api_mid_upload(_images_in(sessions))
    out, err = client.communicate(timeout=120)
    assert client.returncode == 1, err + out
    assert "Traceback" not in err
    status_url = out.strip()
    assert f"batch {status_url.rsplit('/', 1)[1]} is still open and holds" in err
    command = shlex.split(err.split("to send the rest and close it, run: ", 1)[1].strip())
    assert command[:2] == ["retinaq", "submit"] and command[-1] == "--resume"

    stack.start_api()
    resumed = _cli(stack, key, command[1:])
    out, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, err + stack.logs()
    assert out.strip() == status_url, "the same batch, finished"
    _graded_exactly_once(headers, sessions, status_url, ".jpg")
