"""``retinaq demo``: a real screening batch through the real API, queue and worker.

Everything runs in the embedded profile under ``var/demo`` (SQLite and a folder broker),
with the API server and a Celery worker as child processes, so nothing needs installing.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import click
import httpx
from rich.console import Console

from cli.client import ApiClient, find_images, metadata_rows, write_results_csv
from cli.extras import require_extra
from cli.processes import child_process, free_port
from cli.submitting import results_table, upload_with_progress, wait_with_progress
from common.access.apikeys import create_programme
from common.db.engine import engine_from_settings, make_sessionmaker
from common.db.schema import upgrade_to_head
from common.settings import Settings

# Package data (in a checkout, a link to samples/), so an installed copy has its photographs.
SAMPLES_DIR = Path(str(resources.files("cli") / "samples"))
_PROFILE_VARIABLES = (
    "RETINAQ_DATABASE_URL",
    "RETINAQ_BROKER_URL",
    "RETINAQ_STORAGE_URL",
    "RETINAQ_STORAGE_DIR",
)
console = Console()


def embedded_environment(var_dir: Path) -> dict[str, str]:
    """The children's environment: this one, forced onto the embedded profile in ``var_dir``."""
    env = {k: v for k, v in os.environ.items() if k not in _PROFILE_VARIABLES}
    env.update(
        RETINAQ_VAR_DIR=str(var_dir),
        RETINAQ_STATUS_RETRY_AFTER_S="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def wait_until_ready(base_url: str, processes: list[Any], timeout: float = 90.0) -> None:
    """Poll ``/readyz`` until the API answers, failing fast if a child dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise click.ClickException(f"{process.args[3]} exited early; see its log")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise click.ClickException(f"the API did not become ready within {timeout:.0f}s")


@click.command("demo")
@click.option("--var-dir", default=Path("var/demo"), type=click.Path(path_type=Path))
@click.option("--samples", default=SAMPLES_DIR, type=click.Path(path_type=Path, exists=True))
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait for grading.")
def demo(var_dir: Path, samples: Path, timeout: float) -> None:
    """Run a screening batch end to end on the embedded profile (API + worker + CLI client)."""
    require_extra("worker")
    started = time.monotonic()
    var_dir = var_dir.resolve()
    shutil.rmtree(var_dir, ignore_errors=True)
    var_dir.mkdir(parents=True)
    settings = Settings(
        var_dir=var_dir, database_url="", broker_url="", storage_url="", storage_dir=None
    )
    upgrade_to_head(settings.database_url, quiet=True)
    engine = engine_from_settings(settings)
    with make_sessionmaker(engine).begin() as session:
        _, key = create_programme(session, "Demo screening programme")
    engine.dispose()
    console.print(f"embedded profile in {var_dir} (SQLite + folder broker); programme created")

    env = embedded_environment(var_dir)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    api_argv = [sys.executable, "-m", "cli", "api", "--port", str(port), "--workers", "2"]
    worker_argv = [sys.executable, "-m", "cli", "worker"]
    with (
        child_process("API server", api_argv, env, var_dir / "api.log") as api,
        child_process("worker", worker_argv, env, var_dir / "worker.log") as worker,
    ):
        wait_until_ready(base_url, [api, worker])
        console.print(f"API at {base_url} (gunicorn), worker started (celery, solo pool)")
        files = find_images([samples])
        metadata = metadata_rows(
            samples / "metadata.csv" if (samples / "metadata.csv").exists() else None
        )
        with ApiClient(base_url, key.secret) as client:
            submission = upload_with_progress(client, files, metadata, "demo", 8)
            console.print(f"batch {submission.batch_id}: {submission.status_url}")
            status = wait_with_progress(
                client, submission.status_url, len(files), timeout, check=lambda: _alive(worker)
            )
            rows = list(client.iter_results(submission.batch_id))
        console.print(results_table(rows))
        out = write_results_csv(rows, var_dir / "results.csv")
        counts = status["counts"]
        console.print(
            f"batch {status['state']}: {counts['graded']} graded, {counts['ungradable']} "
            f"ungradable, {counts['failed']} failed; {status['referable_count']} referable"
        )
        console.print(f"results CSV: {out}")
    console.print(f"demo finished in {time.monotonic() - started:.1f}s")


def _alive(process: Any) -> None:
    """Abort the wait when a child server has died."""
    if process.poll() is not None:
        raise click.ClickException(f"the worker exited with code {process.returncode}; see its log")
