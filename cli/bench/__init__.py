"""``retinaq bench``: where the time goes, as ratios measured in one run on one machine.

Runs on the production profile (PostgreSQL and Redis) in a scratch database and queue:

1. ``offline``    a tight loop over the stored files: read, the worker's decode + quality
                  check + preprocess, model (:mod:`cli.bench.offline`).
   ``decoding``   then, in a sampling pass of its own, one core's CPU milliseconds per
                  image for decode, check and preprocess by photograph size, the images
                  per second per core they allow, and the decoder cores the model's
                  offline rate needs (:mod:`cli.bench.decoding`).
2. ``ingest``     images/s accepted by the API (64 per request, 2 uploaders, gunicorn
                  with 2 workers) and the API's peak RSS.
3. ``pipeline``   those images, drained by a worker started afterwards: first claim to
                  last result in PostgreSQL; the headline figure is pipeline / offline.
                  The worker's stages are summed from its task reports, not its log.
4. ``naive``      one task per image at batch 1, for contrast.
5. ``end_to_end`` first upload byte to last result with the API and the worker running.
6. ``fairness``   a small batch's completion idle, then behind another programme's
                  backlog (:mod:`cli.bench.fairness`).
7. ``poll``       p50/p99 of ``GET /v1/batches/<id>`` on a batch of each ``--poll-rows``
                  size under 20 concurrent pollers, as clients saw it and as the API spent
                  it (its ``Server-Timing``) (:mod:`cli.bench.poll`).
Ingest and pipeline also report PostgreSQL's and Redis' work per image from their own
counters (:mod:`cli.bench.backends`). End to end and fairness measure latency and overlap, not
scale, so they use at most 2,000 images whatever ``--n``.
The worker's peak RSS is read after 1,000 results and at the end of each drain. Inputs
are in :mod:`cli.bench.data`, the servers in :mod:`cli.bench.servers`, the served stages
in :mod:`cli.bench.pipeline`, and the figures as dataclasses in :mod:`cli.bench.report`.
"""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from pathlib import Path

import click
from rich.console import Console
from sqlalchemy import make_url

from cli.bench.data import make_inputs, parse_rows, parse_sizes, scratch_database
from cli.bench.decoding import measure_decoding
from cli.bench.offline import measure_offline
from cli.bench.pipeline import measure_naive, measure_served
from cli.bench.report import make_report, report_table, write_report
from cli.bench.servers import open_servers
from cli.extras import require_extra

console = Console()


@click.command("bench")
@click.option("--n", "count", default=2000, show_default=True, help="Images per measurement.")
@click.option("--arch", default="small", show_default=True, help="small or a Keras backbone.")
@click.option(
    "--sizes",
    default="model",
    show_default=True,
    help="Photographs' WxH: model (a square twice the model's input), real (2124x2056, "
    "3504x2336 and 4000x3000 in turn) or a list such as 2124x2056,4000x3000.",
)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--naive-n", default=300, show_default=True, help="Images for the batch-1 run.")
@click.option(
    "--offline-n",
    type=click.IntRange(min=1),
    default=None,
    help="Images for the offline ceiling, the first of --n (default: all): it is a rate, so "
    "a sample of a long run measures the same ceiling in less time.",
)
@click.option(
    "--poll-rows",
    default="100000",
    show_default=True,
    help="Rows of the polled batch; a list such as 2000,100000,1000000 polls each in turn.",
)
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
    sizes: str,
    batch_size: int,
    naive_n: int,
    offline_n: int | None,
    poll_rows: str,
    poll_seconds: float,
    server_url: str,
    broker_url: str,
    out: Path,
) -> None:
    """Measure offline, pipeline, naive, end-to-end, ingest and poll figures in one run."""
    photograph_sizes = parse_sizes(sizes)
    polled = parse_rows(poll_rows)
    require_extra("worker")
    from worker.ml.model import configure_devices

    devices = configure_devices()
    with ExitStack() as stack, tempfile.TemporaryDirectory(prefix="retinaq-bench-") as tmp:
        work = Path(tmp)
        database_url = stack.enter_context(scratch_database(server_url))
        inputs = make_inputs(arch, count, naive_n, work, photograph_sizes)
        servers = open_servers(
            stack,
            database_url,
            broker_url,
            work,
            inputs.model_path,
            batch_size=batch_size,
            quota=10 * (count + sum(polled)),
        )
        console.print("offline: tight loop …")
        offline = measure_offline(inputs.model_path, inputs.main[:offline_n], batch_size)
        console.print("decoding: CPU time per image by size …")
        decoding = measure_decoding(inputs.model_path, inputs.main, offline)
        served = measure_served(servers, inputs.main, inputs.end_to_end, polled, poll_seconds)
        naive = measure_naive(servers, inputs.naive)
    name = str(make_url(database_url).database)
    report = make_report(arch, batch_size, devices, name, offline, decoding, served, naive)
    write_report(report, out)
    console.print(report_table(report))
    console.print(f"written to {out}")
