"""Latency of ``GET /v1/batches/<id>`` on a large batch under concurrent pollers."""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import click
import httpx
from sqlalchemy import insert, text, update
from sqlalchemy.orm import Session

from cli.bench.report import Poll
from cli.bench.servers import Servers
from common.db.tables import Batch, BatchState, Image, ImageState, Result, utcnow
from common.ids import uuid7

POLLERS = 20
INSERT_CHUNK = 5000


def measure_poll(servers: Servers, rows: int, seconds: float) -> Poll:
    """Latency of the status endpoint under 20 concurrent pollers.

    The clock starts only once every poller holds its client (creating 20 TLS-capable
    clients takes longer than a short run on a busy box), and each poller sends at
    least one request, so a short run still measures something.
    """
    headers, batch_id = insert_poll_batch(servers, rows)
    url = f"{servers.api_url}/v1/batches/{batch_id}"
    latencies: list[float] = []
    server_wall: list[float] = []
    server_cpu: list[float] = []
    lock = threading.Lock()
    stop_at = [0.0]

    def start_clock() -> None:
        stop_at[0] = time.monotonic() + seconds

    ready = threading.Barrier(POLLERS, action=start_clock, timeout=120)

    def poll() -> None:
        with httpx.Client(headers=headers, timeout=30) as http:
            ready.wait()
            while True:
                clock = time.perf_counter()
                response = http.get(url)
                elapsed = (time.perf_counter() - clock) * 1000
                if response.status_code != 200:
                    raise click.ClickException(f"poll answered {response.status_code}")
                wall, cpu = server_timing(response.headers.get("Server-Timing", ""))
                with lock:
                    latencies.append(elapsed)
                    server_wall.append(wall)
                    server_cpu.append(cpu)
                if time.monotonic() >= stop_at[0]:
                    return

    with ThreadPoolExecutor(POLLERS) as pool:
        for future in [pool.submit(poll) for _ in range(POLLERS)]:
            future.result()
    # Its queued rows name no files: cancelled (directly, as they were inserted), so no
    # later stage's worker takes their turn.
    with servers.engine.begin() as connection:
        connection.execute(
            update(Image)
            .where(Image.batch_id == uuid.UUID(batch_id), Image.state == ImageState.QUEUED)
            .values(state=ImageState.CANCELLED)
        )
    return Poll(
        rows=rows,
        pollers=POLLERS,
        requests=len(latencies),
        p50_ms=round(statistics.median(latencies), 2),
        p99_ms=percentile_99(latencies),
        server_p50_ms=round(statistics.median(server_wall), 2),
        server_p99_ms=percentile_99(server_wall),
        server_cpu_p50_ms=round(statistics.median(server_cpu), 2),
    )


def percentile_99(values: list[float]) -> float:
    """The 99th percentile by rank, to a hundredth."""
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2)


def server_timing(header: str) -> tuple[float, float]:
    """The ``app`` and ``cpu`` durations (ms) of an API response's ``Server-Timing``."""
    durations = {}
    for metric in header.split(","):
        name, _, params = metric.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur":
                durations[name] = float(value)
    if "app" not in durations or "cpu" not in durations:
        raise click.ClickException(f"the API sent no usable Server-Timing: {header!r}")
    return durations["app"], durations["cpu"]


def insert_poll_batch(servers: Servers, rows: int) -> tuple[dict[str, str], str]:
    """A closed batch of ``rows`` images, 90 % graded, inserted directly (not via uploads)."""
    headers, programme_id = servers.new_key("poll")
    with Session(servers.engine) as session:
        batch = Batch(
            programme_id=programme_id,
            state=BatchState.PROCESSING,
            image_count=rows,
            closed_at=utcnow(),
        )
        session.add(batch)
        session.commit()
        now = utcnow()
        for start in range(0, rows, INSERT_CHUNK):
            images, results = _poll_rows(
                batch.id, programme_id, range(start, min(rows, start + INSERT_CHUNK)), now
            )
            session.execute(insert(Image), images)
            session.execute(insert(Result), results)
            session.commit()
        session.execute(text("ANALYZE images; ANALYZE results"))
        session.commit()
        return headers, str(batch.id)


def _poll_rows(
    batch_id: uuid.UUID, programme_id: uuid.UUID, indices: range, now: datetime
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Image rows for ``indices``, and a result for nine in ten of them."""
    images, results = [], []
    for index in indices:
        image_id = uuid7()
        graded = index % 10 != 0
        images.append(
            {
                "id": image_id,
                "batch_id": batch_id,
                "programme_id": programme_id,
                "sha256": f"{index:064x}",
                "storage_path": "none",
                "size_bytes": 1,
                "filename": f"{index}.jpg",
                "state": ImageState.GRADED if graded else ImageState.QUEUED,
                "attempts": 1 if graded else 0,
                "created_at": now,
            }
        )
        if graded:
            results.append(_poll_result(image_id, batch_id, index))
    return images, results


def _poll_result(image_id: uuid.UUID, batch_id: uuid.UUID, index: int) -> dict[str, Any]:
    grade = index % 5
    return {
        "id": uuid7(),
        "image_id": image_id,
        "batch_id": batch_id,
        "grade": grade,
        "grade_name": "x",
        "probabilities": [0.2] * 5,
        "referable": grade >= 2,
        "referable_probability": 0.6,
        "referable_threshold": 0.5,
        "confidence": 0.2,
        "model_name": "poll",
        "model_version": "1",
        "model_sha256": "0" * 64,
        "inference_ms": 1.0,
        "created_at": utcnow(),
    }
