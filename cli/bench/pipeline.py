"""The served stages: ingest, the drain after it, end to end, and naive batch-1 grading."""

from __future__ import annotations

import json
import subprocess
import time
from contextlib import ExitStack
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import click
from rich.console import Console

from cli.bench.backends import Counters, per_image
from cli.bench.data import LATENCY_IMAGES
from cli.bench.fairness import measure_fairness
from cli.bench.poll import POLLERS, measure_poll
from cli.bench.report import Drain, Ingest, PipelineDrain, Served, Throughput
from cli.bench.servers import (
    RSS_CHECKPOINT,
    UPLOAD_CHUNK,
    UPLOADERS,
    Servers,
    peak_rss_mib,
    wait_for,
)

console = Console()
DRAIN_TIMEOUT_S = 3600


def measure_served(
    servers: Servers,
    main: list[Path],
    end_to_end: list[Path],
    poll_rows: list[int],
    poll_s: float,
) -> Served:
    """Ingest ``main``, drain it, then ``end_to_end`` with a worker running, fairness
    (``main`` again as another programme's backlog), then polls."""
    with ExitStack() as stack:
        console.print("ingest: uploads with no worker running …")
        api = servers.api(stack)
        # Warm the API's processes (imports, connection pools) before timing them.
        servers.upload(servers.new_key("warm-up")[0], end_to_end[: UPLOADERS * UPLOAD_CHUNK])
        batch_id, ingest = measure_ingest(servers, api, main)
        console.print("pipeline: worker drains what was uploaded …")
        pipeline = measure_pipeline(servers, batch_id, len(main))
        console.print("end_to_end: upload while the worker runs …")
        through = measure_end_to_end(servers, end_to_end)
        console.print("fairness: a small batch idle, then behind another programme's backlog …")
        fairness = measure_fairness(servers, main[:LATENCY_IMAGES], end_to_end)
        polls = []
        for rows in poll_rows:
            console.print(f"poll: {rows} rows, {POLLERS} pollers …")
            polls.append(measure_poll(servers, rows, poll_s))
    return Served(ingest, pipeline, through, fairness, polls)


def measure_ingest(
    servers: Servers, api: subprocess.Popen, files: list[Path]
) -> tuple[str, Ingest]:
    """Upload ``files`` into one batch with no worker running; (batch id, figures)."""
    rss: list[float] = []
    headers, _ = servers.new_key("pipeline")
    # Settled, so the warm-up's counters are in before, and the ingest's in after.
    before = Counters.read(servers.engine, servers.broker_url, settle=True)
    batch_id, seconds = servers.upload(
        headers, files, on_checkpoint=lambda: rss.append(peak_rss_mib(api.pid))
    )
    api_rss = peak_rss_mib(api.pid)
    after = Counters.read(servers.engine, servers.broker_url, settle=True)
    return batch_id, Ingest.measured(
        len(files),
        seconds,
        api_peak_rss_mib_at_1000=rss[0],
        api_peak_rss_mib_at_end=api_rss,
        backends=per_image(before, after, len(files)),
    )


def measure_pipeline(servers: Servers, batch_id: str, total: int) -> PipelineDrain:
    """A worker started now drains the uploaded batch; its stages come from its reports."""
    before = Counters.read(servers.engine, servers.broker_url)
    results_before = servers.results()
    with ExitStack() as stack:
        worker = servers.worker(stack, "pipeline")
        drained = drain(servers, batch_id, worker, total, servers.task_reports("pipeline"))
    # The worker has exited, so its counters are in; the warm-up images it also graded
    # are counted among the results.
    after = Counters.read(servers.engine, servers.broker_url)
    backends = per_image(before, after, servers.results() - results_before)
    # The worker grades the API's warm-up uploads too (their programme takes its turns);
    # only the tasks that finished after this batch's first claim are this batch's.
    first_claim, _ = servers.claim_span(batch_id)
    stages = worker_stage_totals(servers.task_reports("pipeline"), since=first_claim)
    return PipelineDrain(**asdict(drained), worker_stages_s=stages, backends=backends)


def measure_end_to_end(servers: Servers, files: list[Path]) -> Throughput:
    """First upload byte to last result, with a worker already loaded and waiting."""
    with ExitStack() as stack:
        worker = servers.worker(stack, "e2e")
        servers.wait_worker_ready(worker, "e2e")  # readiness only: no figure is read from the log
        started = time.perf_counter()
        batch_id, _ = servers.upload(servers.new_key("e2e")[0], files)
        wait_for(lambda: servers.pending(batch_id) == 0, DRAIN_TIMEOUT_S, "end-to-end drain")
        return Throughput.measured(len(files), time.perf_counter() - started)


def measure_naive(servers: Servers, files: list[Path]) -> Drain:
    """One image per task and per model call: what batching is compared with."""
    console.print("naive: one task per image at batch 1 …")
    with ExitStack() as stack:
        servers.api(stack, RETINAQ_TASK_SIZE="1")
        batch_id, _ = servers.upload(servers.new_key("naive")[0], files)
        worker = servers.worker(stack, "naive", RETINAQ_GRADING_BATCH_SIZE="1")
        return drain(servers, batch_id, worker, len(files), servers.task_reports("naive"))


def drain(
    servers: Servers, batch_id: str, worker: subprocess.Popen, total: int, reports: Path
) -> Drain:
    """Wait until the batch is graded; RSS at the 1,000-result checkpoint and at the end.

    Progress is followed in the worker's task reports, not by querying the database, so
    the database's counters over the drain are the worker's work alone (a count over the
    batch's rows every tenth of a second would grow with the batch); the database is
    asked only once the reports say the worker has handled enough images.
    """
    rss_checkpoint = None
    deadline = time.monotonic() + DRAIN_TIMEOUT_S

    def check(handled: int) -> None:
        nonlocal rss_checkpoint
        if worker.poll() is not None:
            raise click.ClickException("the worker died; see its log")
        if rss_checkpoint is None and handled >= min(RSS_CHECKPOINT, total):
            rss_checkpoint = peak_rss_mib(worker.pid)
        if time.monotonic() > deadline:
            raise click.ClickException("the worker did not drain the queue in time")
        time.sleep(0.1)

    while (handled := images_handled(reports)) < total:
        check(handled)
    while servers.pending(batch_id):
        check(total)
    first_claim, last_result = servers.claim_span(batch_id)
    return Drain.measured(
        total,
        (last_result - first_claim).total_seconds(),
        worker_peak_rss_mib_at_1000=rss_checkpoint or peak_rss_mib(worker.pid),
        worker_peak_rss_mib_at_end=peak_rss_mib(worker.pid),
    )


def images_handled(reports: Path) -> int:
    """Images a worker has graded, found ungradable or failed, from its task reports (a
    line still being written, after the last newline, is left for the next look)."""
    if not reports.exists():
        return 0
    handled = 0
    for line in reports.read_text().split("\n")[:-1]:
        if line.strip():
            record = json.loads(line)
            handled += record["graded"] + record["ungradable"] + record["failed"]
    return handled


def worker_stage_totals(reports: Path, since: datetime | None = None) -> dict[str, float]:
    """Seconds per stage (decode wait, inference, database write) summed over the tasks a
    worker reported, one JSON line each (``RETINAQ_TASK_REPORTS_PATH``), that finished at
    or after ``since``."""
    if not reports.exists():
        raise click.ClickException(f"the worker wrote no task reports to {reports}")
    totals: dict[str, float] = {}
    for line in reports.read_text().splitlines():
        record = json.loads(line)
        if since is not None and datetime.fromisoformat(record["finished_at"]) < since:
            continue
        for stage, ms in record["timings_ms"].items():
            totals[stage] = totals.get(stage, 0.0) + ms / 1000
    return {k: round(v, 3) for k, v in totals.items()}
