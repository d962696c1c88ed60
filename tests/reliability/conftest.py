"""Private PostgreSQL and Redis servers, and a whole RetinaQ stack, for tests that break things.

Stopping these servers never disturbs the shared ones the rest of the suite uses, and
everything is torn down even when a test fails. The stack stores bytes in a folder unless
a test parametrises ``storage`` (``STORES``): then it also runs on a prefix of its own in
the session's private S3 server (a SeaweedFS), as nodes that share no disk would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from common.db.schema import upgrade_to_head
from common.settings import Settings
from common.storage import ObjectStore, open_store
from tests.support import (
    REPO_ROOT,
    PrivatePostgres,
    PrivateRedis,
    free_port,
    log_tails,
    run_private_postgres,
    run_private_redis,
    stop_process_groups,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def wait() -> Callable[[Callable[[], bool], float, str], None]:
    """``wait(condition, timeout, what)`` for the tests."""
    return wait_for


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A fresh cluster of this test's own with a migrated ``retinaq`` database."""
    with run_private_postgres("retinaq") as server:
        upgrade_to_head(server.url, quiet=True)
        yield server


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A Redis of this test's own."""
    with run_private_redis() as server:
        yield server


@dataclass
class Stack:
    """The API, the reconciler and a restartable worker, as real processes."""

    env: dict[str, str]
    log_dir: Path
    api_url: str
    storage_url: str
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    restarts: int = 0

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = (self.log_dir / f"{name}-{self.restarts}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", *argv],
            env=self.env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill -9 reaches pool children
        )
        log.close()
        self.processes[name] = process
        return process

    def start_api(self) -> None:
        port = self.api_url.rsplit(":", 1)[1]
        self._spawn("api", ["api", "--port", port, "--workers", "2"])
        wait_for(self._api_answers, 60, "the API to answer")

    def _api_answers(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def start_worker(self, serve: str = "all") -> None:
        self.restarts += 1
        self._spawn(
            "worker", ["worker", "--serve", serve, "--hostname", f"fault{self.restarts}@%h"]
        )

    def store(self) -> ObjectStore:
        """The stack's image store, opened as its processes open it."""
        var_dir = Path(self.env["RETINAQ_VAR_DIR"])
        return open_store(Settings(var_dir=var_dir, storage_url=self.storage_url))

    def kill_worker(self) -> None:
        """``kill -9`` the worker and every process in its group."""
        process = self.processes["worker"]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)

    def start_reconciler(self) -> None:
        self._spawn("reconciler", ["reconcile"])

    def logs(self) -> str:
        return log_tails(self.log_dir)

    def stop_all(self) -> None:
        stop_process_groups(self.processes.values())


@pytest.fixture
def stack(
    private_postgres: PrivatePostgres,
    private_redis: PrivateRedis,
    bundled_model_path: Path,
    storage_url: str,
    tmp_path: Path,
) -> Iterator[Stack]:
    """The default timings (lease, reconciler interval, attempts, retries): recovery must be
    quick with what an operator gets out of the box. Smaller tasks and model batches than
    the default make a kill land mid-run on a few hundred images. ``storage_url`` comes
    first, so the S3 server's AWS variables are in the environment the processes inherit."""
    storage_url = storage_url or (tmp_path / "images").as_uri()
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("RETINAQ_")}
    env = {
        **inherited,
        "RETINAQ_VAR_DIR": str(tmp_path),
        "RETINAQ_DATABASE_URL": private_postgres.url,
        "RETINAQ_BROKER_URL": private_redis.url,
        "RETINAQ_STORAGE_URL": storage_url,
        "RETINAQ_MODEL_PATH": str(bundled_model_path),
        "RETINAQ_GRADING_BATCH_SIZE": "8",
        "RETINAQ_TASK_SIZE": "8",
        "RETINAQ_SECRET_KEY": "reliability-secret-key-for-cursors",
        "PYTHONUNBUFFERED": "1",
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    running = Stack(env, logs, f"http://127.0.0.1:{free_port()}", storage_url)
    try:
        yield running
    finally:
        running.stop_all()
