"""The servers under measurement: gunicorn and Celery children on a scratch database and
queue, the uploads they are sent, and what PostgreSQL and ``/proc`` say about them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

import click
import httpx
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from cli.processes import child_process, free_port
from common.access.apikeys import create_programme
from common.db.engine import make_engine
from common.db.tables import Image, ImageState, Result
from common.ids import uuid7

UPLOAD_CHUNK = 64
UPLOADERS = 2
API_WORKERS = 2
RSS_CHECKPOINT = 1000


def server_environment(
    database_url: str,
    broker_url: str,
    queue: str,
    work: Path,
    model_path: Path,
    *,
    batch_size: int,
    quota: int,
) -> dict[str, str]:
    """The children's environment: this one without its ``RETINAQ_*``, on the scratch
    database, a queue of the run's own, files under ``work`` and quotas no run reaches."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("RETINAQ_")},
        "RETINAQ_DATABASE_URL": database_url,
        "RETINAQ_BROKER_URL": broker_url,
        "RETINAQ_QUEUE_NAME": queue,
        "RETINAQ_EXPLAIN_QUEUE_NAME": f"{queue}.explain",
        "RETINAQ_STORAGE_DIR": str(work / "store"),
        "RETINAQ_VAR_DIR": str(work),
        "RETINAQ_MODEL_PATH": str(model_path),
        "RETINAQ_GRADING_BATCH_SIZE": str(batch_size),
        "RETINAQ_LOG_LEVEL": "INFO",
        "RETINAQ_SECRET_KEY": os.urandom(32).hex(),
        "RETINAQ_DEFAULT_MAX_PENDING_IMAGES": str(quota),
        "RETINAQ_DEFAULT_MAX_IMAGES_PER_MINUTE": str(quota),
    }


def open_servers(
    stack: ExitStack,
    database_url: str,
    broker_url: str,
    work: Path,
    model_path: Path,
    *,
    batch_size: int,
    quota: int,
) -> Servers:
    """A run's servers on the scratch database and a queue of the run's own; the queue and
    the engine go when ``stack`` closes."""
    queue = f"retinaq.bench.{uuid.uuid4().hex[:8]}"
    stack.callback(drop_queues, broker_url, [queue, f"{queue}.explain"])
    env = server_environment(
        database_url, broker_url, queue, work, model_path, batch_size=batch_size, quota=quota
    )
    logs = work / "logs"
    logs.mkdir()
    servers = Servers(database_url, env, logs)
    stack.callback(servers.engine.dispose)
    return servers


def drop_queues(broker_url: str, names: list[str]) -> None:
    """The heat-map tasks nobody consumes here, and anything left, go with the run."""
    import redis

    client = redis.Redis.from_url(broker_url)
    try:
        client.delete(*names)
    finally:
        client.close()


class Servers:
    """Starts the API and workers of one run and reads the scratch database they share."""

    def __init__(self, database_url: str, env: dict[str, str], logs: Path) -> None:
        self.engine: Engine = make_engine(database_url)
        self.env = env
        self.broker_url = env["RETINAQ_BROKER_URL"]
        self.logs = logs
        self.api_url = f"http://127.0.0.1:{free_port()}"

    def new_key(self, name: str) -> tuple[dict[str, str], uuid.UUID]:
        """A fresh programme (so no result is reused across measurements) and its headers."""
        with Session(self.engine) as session, session.begin():
            _, key = create_programme(session, f"{name}-{uuid.uuid4().hex[:6]}")
        return {"Authorization": f"Bearer {key.secret}"}, key.programme_id

    def api(self, stack: ExitStack, **extra_env: str) -> subprocess.Popen:
        """Start gunicorn on ``stack`` and wait until it answers ``/healthz``."""
        port = self.api_url.rsplit(":", 1)[1]
        process = stack.enter_context(
            child_process(
                "API",
                [sys.executable, "-m", "cli", "api", "--port", port, "--workers", str(API_WORKERS)],
                {**self.env, **extra_env},
                self.logs / f"api-{time.monotonic_ns()}.log",
            )
        )
        wait_for(lambda: _answers(f"{self.api_url}/healthz"), 60, "the API")
        return process

    def worker_log(self, name: str) -> Path:
        """Where the worker started as ``name`` writes its log."""
        return self.logs / f"worker-{name}.log"

    def wait_worker_ready(self, worker: subprocess.Popen, name: str) -> None:
        """Until the worker started as ``name`` has its model warm and consumes its queue
        (Celery's "ready" comes after the model, once the consumer has started), so a
        stage timed from here includes no start-up; a worker that exits instead fails the
        command at once, pointing at its log."""
        log = self.worker_log(name)

        def ready() -> bool:
            if worker.poll() is not None:
                raise click.ClickException(f"the worker exited at start; see {log}")
            text = log.read_text()
            return "warmed up" in text and " ready." in text

        wait_for(ready, 300, "worker")

    def task_reports(self, name: str) -> Path:
        """The file to which the worker started as ``name`` appends one line per task."""
        return self.logs / f"tasks-{name}.jsonl"

    def worker(self, stack: ExitStack, name: str, **extra_env: str) -> subprocess.Popen:
        """Start a grading worker on ``stack``; as in production, it makes no heat maps."""
        argv = [sys.executable, "-m", "cli", "worker", "--serve", "grading"]
        return stack.enter_context(
            child_process(
                "worker",
                [*argv, "--hostname", f"bench-{uuid7()}@%h"],
                {
                    **self.env,
                    "RETINAQ_TASK_REPORTS_PATH": str(self.task_reports(name)),
                    **extra_env,
                },
                self.worker_log(name),
            )
        )

    def upload(
        self,
        headers: dict[str, str],
        files: list[Path],
        on_checkpoint: Callable[[], None] | None = None,
    ) -> tuple[str, float]:
        """Upload into one open batch with parallel 64-image requests; (batch id, seconds).

        ``on_checkpoint`` runs once the first 1,000 images are in (memory readings).
        """
        with httpx.Client(base_url=self.api_url, headers=headers, timeout=300) as http:
            started = time.perf_counter()
            created = http.post("/v1/batches", json={"open": True}).json()
            chunks = [files[i : i + UPLOAD_CHUNK] for i in range(0, len(files), UPLOAD_CHUNK)]

            def send(chunk: list[Path]) -> None:
                parts = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in chunk]
                response = http.post(created["links"]["add_images"], files=parts)
                response.raise_for_status()

            split = -(-min(RSS_CHECKPOINT, len(files)) // UPLOAD_CHUNK)
            with ThreadPoolExecutor(UPLOADERS) as pool:
                list(pool.map(send, chunks[:split]))
                if on_checkpoint:
                    on_checkpoint()
                list(pool.map(send, chunks[split:]))
            http.post(created["links"]["close"]).raise_for_status()
            return created["id"], time.perf_counter() - started

    def pending(self, batch_id: str) -> int:
        """Images of the batch still queued or being graded."""
        with self.engine.connect() as connection:
            return int(
                connection.scalar(
                    select(func.count())
                    .select_from(Image)
                    .where(
                        Image.batch_id == uuid.UUID(batch_id),
                        Image.state.in_([ImageState.QUEUED, ImageState.PROCESSING]),
                    )
                )
                or 0
            )

    def results(self) -> int:
        """Results written in the whole database so far."""
        with self.engine.connect() as connection:
            return int(connection.scalar(select(func.count()).select_from(Result)) or 0)

    def claim_span(self, batch_id: str) -> tuple[datetime, datetime]:
        """First claim and last result written, from the database's own timestamps."""
        with self.engine.connect() as connection:
            first = connection.scalar(
                select(func.min(Image.started_at)).where(Image.batch_id == uuid.UUID(batch_id))
            )
            last = connection.scalar(
                select(func.max(Result.created_at)).where(Result.batch_id == uuid.UUID(batch_id))
            )
        return first, last


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory of a process and its children (largest single process)."""
    peaks = []
    for candidate in [pid, *_children(pid)]:
        try:
            status = Path(f"/proc/{candidate}/status").read_text()
        except OSError:
            continue
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        if match:
            peaks.append(int(match.group(1)) / 1024)
    return round(max(peaks, default=0.0), 1)


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll ``condition`` until it holds, or fail the command after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise click.ClickException(f"timed out waiting for {what}")
        time.sleep(interval)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False
