"""``retinaq bench-poll``: the API's own time for one status poll, by batch size.

``retinaq bench``'s poll stage measures 20 concurrent pollers, whose p99 on a small host
is mostly queueing for a CPU. This measures what must not grow with the batch: batches of
each size in one scratch database (inserted as the bench's poll stage inserts them), then
sequential polls of the API server (gunicorn, as the bench starts it), after a warm-up
round, reading each response's ``Server-Timing`` (wall clock and CPU).
"""

from __future__ import annotations

import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path

import click
import httpx

from cli.bench.data import parse_rows, scratch_database
from cli.bench.poll import insert_poll_batch, percentile_99, server_timing
from cli.bench.servers import open_servers
from common.settings import BUNDLED_MODEL


@click.command("bench-poll")
@click.option("--rows", "rows", default="2000,100000,1000000", show_default=True)
@click.option("--requests", default=300, show_default=True, type=click.IntRange(min=1))
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
def bench_poll(rows: str, requests: int, server_url: str, broker_url: str) -> None:
    """The server-side time of one GET /v1/batches/<id> at each batch size."""
    sizes = parse_rows(rows)
    with (
        ExitStack() as stack,
        tempfile.TemporaryDirectory(prefix="retinaq-bench-poll-") as tmp,
    ):
        url = stack.enter_context(scratch_database(server_url))
        servers = open_servers(
            stack, url, broker_url, Path(tmp), BUNDLED_MODEL, batch_size=32, quota=10
        )
        batches = []
        for size in sizes:
            click.echo(f"inserting a batch of {size} rows …")
            batches.append((size, *insert_poll_batch(servers, size)))
        servers.api(stack)
        with httpx.Client(base_url=servers.api_url, timeout=60) as http:
            for timed in (False, True):  # the first round warms caches and query plans
                for size, headers, batch_id in batches:
                    walls, cpus = [], []
                    for _ in range(requests):
                        response = http.get(f"/v1/batches/{batch_id}", headers=headers)
                        if response.status_code != 200:
                            raise click.ClickException(f"poll answered {response.status_code}")
                        wall, cpu = server_timing(response.headers.get("Server-Timing", ""))
                        walls.append(wall)
                        cpus.append(cpu)
                    if timed:
                        click.echo(
                            f"{size:>9} rows: server wall p50 {statistics.median(walls):.2f} ms, "
                            f"p99 {percentile_99(walls):.2f} ms, "
                            f"CPU p50 {statistics.median(cpus):.2f} ms"
                        )
