"""``retinaq bench``: where the time goes, as ratios measured in one run on one machine.

Runs on the production profile (PostgreSQL and Redis) in a scratch database and queue:

1. ``offline``    a tight loop over the stored files: read, decode + preprocess, model.
2. ``ingest``     images/s accepted by the API (64 per request, 2 uploaders, gunicorn
                  with 2 workers) and the API's peak RSS.
3. ``pipeline``   those images, drained by a worker started afterwards: first claim to
                  last result in PostgreSQL; the headline figure is pipeline / offline.
4. ``naive``      one task per image at batch 1, for contrast.
5. ``end_to_end`` first upload byte to last result with the API and the worker running.
6. ``poll``       p50/p99 of ``GET /v1/batches/<id>`` on a batch of ``--poll-rows`` images
                  under 20 concurrent pollers.
The worker's peak RSS is read after 1,000 results and at the end of each drain.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import click
import httpx
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, create_engine, func, insert, make_url, select, text
from sqlalchemy.orm import Session

from cli.demo import child_process, free_port
from common.access.apikeys import create_programme
from common.db.engine import make_engine
from common.db.schema import upgrade_to_head
from common.db.tables import Batch, BatchState, Image, ImageState, Result, utcnow
from common.ids import uuid7
from common.settings import BUNDLED_MODEL, Settings

console = Console()
UPLOAD_CHUNK = 64
UPLOADERS = 2
API_WORKERS = 2
POLLERS = 20
RSS_CHECKPOINT = 1000


# --- fixtures: database, images, model ---------------------------------------------------


@contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    """A migrated database of the benchmark's own, dropped afterwards."""
    name = f"retinaq_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade_to_head(url, quiet=True)
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def write_images(folder: Path, count: int, size: int) -> list[Path]:
    """``count`` distinct JPEG files: 64 synthetic photographs, each copy made unique by a
    trailing index after the end-of-image marker (decoders ignore it, hashes differ)."""
    from lab.synthetic import encode_image, generate_fundus

    folder.mkdir(parents=True, exist_ok=True)
    pool = [encode_image(generate_fundus(i % 5, 7000 + i, size)) for i in range(min(64, count))]
    paths = []
    for index in range(count):
        path = folder / f"bench-{index:06d}.jpg"
        path.write_bytes(pool[index % len(pool)] + index.to_bytes(8, "big"))
        paths.append(path)
    return paths


def prepare_model(arch: str, folder: Path) -> Path:
    """The bundled model, or a standard backbone with random weights and its manifest."""
    if arch == "small":
        return BUNDLED_MODEL
    from worker.ml.networks import BACKBONES, build_backbone, save_with_manifest

    if arch not in BACKBONES:
        raise click.BadParameter(f"arch must be small or one of {sorted(BACKBONES)}")
    model, size, mode = build_backbone(arch)
    save_with_manifest(
        model,
        folder,
        {
            "name": f"{arch}-random",
            "version": "bench",
            "input_size": size,
            "preprocessing": mode,
            "architecture": arch,
            "training_data": "none: random weights, for benchmarking only",
        },
    )
    return folder / "model.keras"


# --- measurements --------------------------------------------------------------------------


def _drop_queues(broker_url: str, names: list[str]) -> None:
    """The heat-map tasks nobody consumes here, and anything left, go with the run."""
    import redis

    client = redis.Redis.from_url(broker_url)
    try:
        client.delete(*names)
    finally:
        client.close()


def measure_offline(model_path: Path, files: list[Path], batch_size: int) -> dict[str, Any]:
    """The ceiling: one process, one loop, the worker's own decode and inference code."""
    import numpy as np

    from worker.ml.model import load_model

    model = load_model(model_path, batch_size)
    preprocessor = model.manifest.preprocessor
    stages = {"read": 0.0, "decode_preprocess": 0.0, "infer": 0.0}
    max_pixels = Settings().max_image_pixels  # the worker's limit, so both decode alike
    started = time.perf_counter()
    for start in range(0, len(files), batch_size):
        clock = time.perf_counter()
        blobs = [path.read_bytes() for path in files[start : start + batch_size]]
        stages["read"] += time.perf_counter() - clock
        clock = time.perf_counter()
        pixels = [preprocessor.prepare(blob, max_pixels=max_pixels) for blob in blobs]
        inputs = preprocessor.normalise(np.stack(pixels))
        stages["decode_preprocess"] += time.perf_counter() - clock
        clock = time.perf_counter()
        model.predict(inputs)
        stages["infer"] += time.perf_counter() - clock
    elapsed = time.perf_counter() - started
    return {
        "images": len(files),
        "seconds": round(elapsed, 3),
        "images_per_s": round(len(files) / elapsed, 2),
        "stages_s": {k: round(v, 3) for k, v in stages.items()},
    }


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


class Bench:
    """The running servers and the scratch database a benchmark run measures."""

    def __init__(self, database_url: str, env: dict[str, str], logs: Path) -> None:
        self.engine: Engine = make_engine(database_url)
        self.env = env
        self.logs = logs
        self.api_url = f"http://127.0.0.1:{free_port()}"

    def new_key(self, name: str) -> tuple[dict[str, str], uuid.UUID]:
        """A fresh programme (so no result is reused across measurements) and its headers."""
        with Session(self.engine) as session, session.begin():
            _, key = create_programme(session, f"{name}-{uuid.uuid4().hex[:6]}")
        return {"Authorization": f"Bearer {key.secret}"}, key.programme_id

    def api(self, stack: ExitStack, **extra_env: str) -> subprocess.Popen:
        port = self.api_url.rsplit(":", 1)[1]
        process = stack.enter_context(
            child_process(
                "API",
                [sys.executable, "-m", "cli", "api", "--port", port, "--workers", str(API_WORKERS)],
                {**self.env, **extra_env},
                self.logs / f"api-{time.monotonic_ns()}.log",
            )
        )
        _wait(lambda: _answers(f"{self.api_url}/healthz"), 60, "the API")
        return process

    def worker(self, stack: ExitStack, log: Path, **extra_env: str) -> subprocess.Popen:
        return stack.enter_context(
            child_process(
                "worker",
                # As in production: heat maps belong to the explainer, never to a grader.
                [
                    sys.executable,
                    "-m",
                    "cli",
                    "worker",
                    "--serve",
                    "grading",
                    "--hostname",
                    f"bench-{uuid7()}@%h",
                ],
                {**self.env, **extra_env},
                log,
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

    def drain_seconds(self, batch_id: str) -> float:
        """First claim to last result written, from the database's own timestamps."""
        with self.engine.connect() as connection:
            first = connection.scalar(
                select(func.min(Image.started_at)).where(Image.batch_id == uuid.UUID(batch_id))
            )
            last = connection.scalar(
                select(func.max(Result.created_at)).where(Result.batch_id == uuid.UUID(batch_id))
            )
        return (last - first).total_seconds()

    def graded(self, batch_id: str) -> int:
        with self.engine.connect() as connection:
            return int(
                connection.scalar(
                    select(func.count())
                    .select_from(Result)
                    .where(Result.batch_id == uuid.UUID(batch_id))
                )
                or 0
            )


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise click.ClickException(f"timed out waiting for {what}")
        time.sleep(0.05)


def drain(
    bench: Bench, batch_id: str, worker: subprocess.Popen, total: int, timeout: float
) -> dict[str, Any]:
    """Wait until the batch is graded; RSS at the 1,000-result checkpoint and at the end."""
    rss_checkpoint = None
    deadline = time.monotonic() + timeout
    while bench.pending(batch_id):
        if worker.poll() is not None:
            raise click.ClickException("the worker died; see its log")
        if rss_checkpoint is None and bench.graded(batch_id) >= min(RSS_CHECKPOINT, total):
            rss_checkpoint = peak_rss_mib(worker.pid)
        if time.monotonic() > deadline:
            raise click.ClickException("the worker did not drain the queue in time")
        time.sleep(0.1)
    seconds = bench.drain_seconds(batch_id)
    return {
        "images": total,
        "seconds": round(seconds, 3),
        "images_per_s": round(total / seconds, 2),
        "worker_peak_rss_mib_at_1000": rss_checkpoint or peak_rss_mib(worker.pid),
        "worker_peak_rss_mib_at_end": peak_rss_mib(worker.pid),
    }


def worker_stage_totals(log: Path) -> dict[str, float]:
    """Sum the per-task timings the worker logs (decode wait, inference, database write)."""
    totals: dict[str, float] = {}
    for match in re.finditer(r"timings_ms=(\{[^}]*\})", log.read_text(errors="replace")):
        for stage, ms in json.loads(match.group(1).replace("'", '"')).items():
            totals[stage] = totals.get(stage, 0.0) + ms / 1000
    return {k: round(v, 3) for k, v in totals.items()}


def insert_poll_batch(bench: Bench, rows: int) -> tuple[dict[str, str], str]:
    """A closed batch of ``rows`` images, 90 % graded, inserted directly (not via uploads)."""
    headers, programme_id = bench.new_key("poll")
    with Session(bench.engine) as session:
        batch = Batch(
            programme_id=programme_id,
            state=BatchState.PROCESSING,
            image_count=rows,
            closed_at=utcnow(),
        )
        session.add(batch)
        session.commit()
        now = utcnow()
        for start in range(0, rows, 5000):
            images, results = [], []
            for index in range(start, min(rows, start + 5000)):
                image_id = uuid7()
                graded = index % 10 != 0
                images.append(
                    {
                        "id": image_id,
                        "batch_id": batch.id,
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
                    results.append(_poll_result(image_id, batch.id, index))
            session.execute(insert(Image), images)
            session.execute(insert(Result), results)
            session.commit()
        session.execute(text("ANALYZE images; ANALYZE results"))
        session.commit()
        return headers, str(batch.id)


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


def measure_poll(bench: Bench, rows: int, seconds: float) -> dict[str, Any]:
    """Latency of the status endpoint under 20 concurrent pollers.

    The clock starts only once every poller holds its client (creating 20 TLS-capable
    clients takes longer than a short run on a busy box), and each poller sends at
    least one request, so a short run still measures something.
    """
    headers, batch_id = insert_poll_batch(bench, rows)
    url = f"{bench.api_url}/v1/batches/{batch_id}"
    latencies: list[float] = []
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
                with lock:
                    latencies.append(elapsed)
                if time.monotonic() >= stop_at[0]:
                    return

    with ThreadPoolExecutor(POLLERS) as pool:
        for future in [pool.submit(poll) for _ in range(POLLERS)]:
            future.result()
    ordered = sorted(latencies)
    return {
        "rows": rows,
        "pollers": POLLERS,
        "requests": len(ordered),
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 2),
    }


# --- the command -----------------------------------------------------------------------------


@click.command("bench")
@click.option("--n", "count", default=2000, show_default=True, help="Images per measurement.")
@click.option("--arch", default="small", show_default=True, help="small or a Keras backbone.")
@click.option("--batch-size", default=32, show_default=True)
@click.option("--naive-n", default=300, show_default=True, help="Images for the batch-1 run.")
@click.option("--poll-rows", default=100_000, show_default=True)
@click.option("--poll-seconds", default=10.0, show_default=True)
@click.option(
    "--server-url",
    envvar="RETINAQ_BENCH_DATABASE_URL",
    default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
    show_default=True,
    help="PostgreSQL server on which a scratch database is created.",
)
@click.option(
    "--broker-url",
    envvar="RETINAQ_BENCH_BROKER_URL",
    default="redis://127.0.0.1:6379/0",
    show_default=True,
)
@click.option("--out", type=click.Path(path_type=Path), default=Path("bench-results/bench.json"))
def bench(
    count: int,
    arch: str,
    batch_size: int,
    naive_n: int,
    poll_rows: int,
    poll_seconds: float,
    server_url: str,
    broker_url: str,
    out: Path,
) -> None:
    """Measure offline, pipeline, naive, end-to-end, ingest and poll figures in one run."""
    from worker.ml.model import configure_devices

    report: dict[str, Any] = {
        "arch": arch,
        "batch_size": batch_size,
        "cpu_cores": os.cpu_count(),
        "platform": platform.platform(),
        "tensorflow_devices": configure_devices(),
    }
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="retinaq-bench-") as tmp:
        work = Path(tmp)
        database_url = stack.enter_context(scratch_database(server_url))
        model_path = prepare_model(arch, work / "model")
        size = (
            512
            if arch == "small"
            else 2
            * int(json.loads((model_path.parent / "manifest.json").read_text())["input_size"])
        )
        # Named in the report so a caller can check that this run's database was dropped.
        report["scratch_database"] = make_url(database_url).database
        console.print(f"writing {count} + {naive_n} images of {size} px …")
        files = write_images(work / "images", count * 2 + naive_n, size)
        main, e2e, naive = files[:count], files[count : 2 * count], files[2 * count :]
        queue = f"retinaq.bench.{uuid.uuid4().hex[:8]}"
        stack.callback(_drop_queues, broker_url, [queue, f"{queue}.explain"])
        env = {
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
            "RETINAQ_DEFAULT_MAX_PENDING_IMAGES": str(10 * (count + poll_rows)),
            "RETINAQ_DEFAULT_MAX_IMAGES_PER_MINUTE": str(10 * (count + poll_rows)),
        }
        logs = work / "logs"
        logs.mkdir()
        runner = Bench(database_url, env, logs)
        stack.callback(runner.engine.dispose)

        console.print("offline: tight loop …")
        report["offline"] = measure_offline(model_path, main, batch_size)

        console.print("ingest: uploads with no worker running …")
        with ExitStack() as servers:
            api = runner.api(servers)
            # Warm the API's processes (imports, connection pools) before timing them.
            runner.upload(runner.new_key("warm-up")[0], e2e[: UPLOADERS * UPLOAD_CHUNK])
            rss: list[float] = []
            headers, _ = runner.new_key("pipeline")
            batch_id, seconds = runner.upload(
                headers, main, on_checkpoint=lambda: rss.append(peak_rss_mib(api.pid))
            )
            report["ingest"] = {
                "images": count,
                "seconds": round(seconds, 3),
                "images_per_s": round(count / seconds, 2),
                "api_peak_rss_mib_at_1000": rss[0],
                "api_peak_rss_mib_at_end": peak_rss_mib(api.pid),
            }

            console.print("pipeline: worker drains what was uploaded …")
            worker_log = logs / "worker-pipeline.log"
            with ExitStack() as workers:
                worker = runner.worker(workers, worker_log)
                report["pipeline"] = drain(runner, batch_id, worker, count, 3600)
            report["pipeline"]["worker_stages_s"] = worker_stage_totals(worker_log)

            console.print("end_to_end: upload while the worker runs …")
            with ExitStack() as workers:
                worker = runner.worker(workers, logs / "worker-e2e.log")
                _wait(lambda: "warmed up" in (logs / "worker-e2e.log").read_text(), 300, "worker")
                started = time.perf_counter()
                e2e_id, _ = runner.upload(runner.new_key("e2e")[0], e2e)
                _wait(lambda: runner.pending(e2e_id) == 0, 3600, "end-to-end drain")
                elapsed = time.perf_counter() - started
                report["end_to_end"] = {
                    "images": count,
                    "seconds": round(elapsed, 3),
                    "images_per_s": round(count / elapsed, 2),
                }

            console.print(f"poll: {poll_rows} rows, {POLLERS} pollers …")
            report["poll"] = measure_poll(runner, poll_rows, poll_seconds)

        console.print("naive: one task per image at batch 1 …")
        with ExitStack() as servers:
            runner.api(servers, RETINAQ_TASK_SIZE="1")
            naive_id, _ = runner.upload(runner.new_key("naive")[0], naive)
            with ExitStack() as workers:
                worker = runner.worker(
                    workers, logs / "worker-naive.log", RETINAQ_GRADING_BATCH_SIZE="1"
                )
                report["naive"] = drain(runner, naive_id, worker, len(naive), 3600)

    offline = report["offline"]["images_per_s"]
    report["ratios"] = {
        "pipeline_over_offline": round(report["pipeline"]["images_per_s"] / offline, 3),
        "pipeline_over_naive": round(
            report["pipeline"]["images_per_s"] / report["naive"]["images_per_s"], 2
        ),
        "ingest_over_pipeline": round(
            report["ingest"]["images_per_s"] / report["pipeline"]["images_per_s"], 2
        ),
        "end_to_end_over_offline": round(report["end_to_end"]["images_per_s"] / offline, 3),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(_table(report))
    console.print(f"written to {out}")


def _table(report: dict[str, Any]) -> Table:
    table = Table(
        title=f"retinaq bench: {report['arch']}, batch {report['batch_size']}, "
        f"{report['cpu_cores']} cores, devices {', '.join(report['tensorflow_devices'])}"
    )
    for column in ("measurement", "images", "seconds", "img/s", "notes"):
        table.add_column(column)
    for name in ("offline", "pipeline", "naive", "end_to_end", "ingest"):
        row = report[name]
        notes = ""
        if name == "offline":
            notes = f"stages {row['stages_s']}"
        elif name in ("pipeline", "naive"):
            notes = (
                f"worker RSS {row['worker_peak_rss_mib_at_1000']} → "
                f"{row['worker_peak_rss_mib_at_end']} MiB"
            )
        elif name == "ingest":
            notes = (
                f"API RSS {row['api_peak_rss_mib_at_1000']} → {row['api_peak_rss_mib_at_end']} MiB"
            )
        table.add_row(
            name, str(row["images"]), str(row["seconds"]), str(row["images_per_s"]), notes
        )
    poll = report["poll"]
    table.add_row(
        "poll",
        str(poll["rows"]),
        "",
        "",
        f"p50 {poll['p50_ms']} ms, p99 {poll['p99_ms']} ms ({poll['requests']} requests)",
    )
    for name, value in report["ratios"].items():
        table.add_row(name, "", "", str(value), "")
    return table
