"""Private PostgreSQL and Redis servers, and a whole RetinaQ stack, for tests that break things.

Stopping these servers never disturbs the shared ones the rest of the suite uses, and
everything is torn down even when a test fails.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis
from sqlalchemy import create_engine, text

from common.db.schema import upgrade_to_head
from common.settings import PROJECT_ROOT

pytestmark = pytest.mark.slow


def free_port() -> int:
    """An unused loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until true, failing with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.2)


@pytest.fixture
def wait() -> Callable[[Callable[[], bool], float, str], None]:
    """``wait(condition, timeout, what)`` for the tests."""
    return wait_for


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name) or ""]
    if not found[-1]:
        pytest.fail(f"{name} is not installed; the fault tests need the PostgreSQL server binaries")
    return found[-1]


def _as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root; drop to the postgres user when we are root."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@dataclass
class PrivatePostgres:
    """A throwaway PostgreSQL cluster on a free port."""

    data_dir: Path
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/retinaq"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            _as_postgres([_pg_bin("pg_ctl"), "-D", str(self.data_dir), *args]),
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._ctl("-o", options, "-l", str(self.log), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "-w", "stop")


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A fresh cluster with a migrated ``retinaq`` database."""
    root = Path(tempfile.mkdtemp(prefix="retinaq-pg-", dir="/tmp"))
    root.chmod(0o755)
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(data, "postgres")
    subprocess.run(
        _as_postgres([_pg_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]),
        check=True,
        capture_output=True,
        timeout=120,
    )
    server = PrivatePostgres(data, free_port(), root / "postgres.log")
    if os.geteuid() == 0:
        server.log.touch()
        shutil.chown(server.log, "postgres")
    server.start()
    try:
        admin = create_engine(
            f"postgresql+psycopg://postgres@127.0.0.1:{server.port}/postgres",
            isolation_level="AUTOCOMMIT",
        )
        with admin.connect() as connection:
            connection.execute(text("CREATE DATABASE retinaq"))
        admin.dispose()
        upgrade_to_head(server.url, quiet=True)
        yield server
    finally:
        try:
            server.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class PrivateRedis:
    """A throwaway Redis on a free port that keeps nothing on disk."""

    port: int
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        wait_for(lambda: _pings(client), 20, "Redis to start")
        client.close()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    """A Redis of this test's own."""
    server = PrivateRedis(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Stack:
    """The API, the reconciler and a restartable worker, as real processes."""

    env: dict[str, str]
    log_dir: Path
    api_url: str
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    restarts: int = 0

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = (self.log_dir / f"{name}-{self.restarts}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", *argv],
            env=self.env,
            cwd=PROJECT_ROOT,
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

    def start_worker(self) -> None:
        self.restarts += 1
        self._spawn("worker", ["worker", "--hostname", f"fault{self.restarts}@%h"])

    def kill_worker(self) -> None:
        """``kill -9`` the worker and every process in its group."""
        process = self.processes["worker"]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)

    def start_reconciler(self) -> None:
        self._spawn("reconciler", ["reconcile", "--interval", "1"])

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.log_dir.glob("*.log"))
        )

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture
def stack(
    private_postgres: PrivatePostgres,
    private_redis: PrivateRedis,
    bundled_model_path: Path,
    tmp_path: Path,
) -> Iterator[Stack]:
    """Settings tuned so recovery happens within seconds rather than minutes."""
    env = {
        **os.environ,
        "RETINAQ_VAR_DIR": str(tmp_path),
        "RETINAQ_DATABASE_URL": private_postgres.url,
        "RETINAQ_BROKER_URL": private_redis.url,
        "RETINAQ_STORAGE_DIR": str(tmp_path / "images"),
        "RETINAQ_MODEL_PATH": str(bundled_model_path),
        "RETINAQ_GRADING_BATCH_SIZE": "8",
        "RETINAQ_TASK_SIZE": "8",
        "RETINAQ_LEASE_S": "6",
        "RETINAQ_REQUEUE_AFTER_S": "4",
        "RETINAQ_MAX_ATTEMPTS": "20",
        "RETINAQ_DB_RETRY_S": "90",
        "RETINAQ_STATUS_RETRY_AFTER_S": "1",
        "RETINAQ_SECRET_KEY": "reliability-secret-key-for-cursors",
        "PYTHONUNBUFFERED": "1",
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    running = Stack(env, logs, f"http://127.0.0.1:{free_port()}")
    try:
        yield running
    finally:
        running.stop_all()
