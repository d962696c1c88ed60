"""``retinaq db upgrade``, ``retinaq api`` and ``retinaq worker``: the server processes."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

import click

from cli.extras import require_extra
from common.db.engine import engine_from_settings
from common.db.schema import SchemaNotAtHead, assert_schema_at_head, upgrade_to_head
from common.logs import configure_logging
from common.settings import Settings, get_settings

# prometheus_client's own variable: gunicorn's processes count into files of this folder.
METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

log = logging.getLogger(__name__)


def require_schema_at_head() -> None:
    """Exit with the fixing command when the database is not migrated."""
    engine = engine_from_settings(get_settings())
    try:
        assert_schema_at_head(engine)
    except SchemaNotAtHead as error:
        raise click.ClickException(str(error)) from error
    finally:
        engine.dispose()


def _exec(argv: list[str]) -> None:
    """Replace this process, so signals from a supervisor reach the server directly."""
    executable = shutil.which(argv[0], path=os.path.dirname(sys.executable)) or shutil.which(
        argv[0]
    )
    if executable is None:
        raise click.ClickException(f"{argv[0]} is not installed")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(executable, [executable, *argv[1:]])


@click.group("db")
def db() -> None:
    """Database schema commands."""


@db.command("upgrade")
def upgrade() -> None:
    """Apply every Alembic migration up to head."""
    settings = get_settings()
    if settings.is_embedded:
        settings.var_dir.mkdir(parents=True, exist_ok=True)
    upgrade_to_head(settings.database_url)
    click.echo("database is at head")


@click.command("api")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int, help="gunicorn processes")
@click.option(
    "--threads",
    default=8,
    show_default=True,
    type=int,
    help="Requests each process serves at once; slow request heads never hold one.",
)
def api(host: str, port: int, workers: int, threads: int) -> None:
    """Serve the HTTP API with gunicorn (never Flask's development server)."""
    require_schema_at_head()
    os.environ[METRICS_DIR_VARIABLE] = str(prepare_api_metrics_dir(get_settings(), port))
    _exec(
        [
            "gunicorn",
            "--config",
            "python:api.serving.gunicorn_conf",
            "--bind",
            f"{host}:{port}",
            "--workers",
            str(workers),
            "--threads",
            str(threads),
            "api.wsgi:app",
        ]
    )


def prepare_api_metrics_dir(settings: Settings, port: int) -> Path:
    """The API's multiprocess metrics folder, created and emptied of a former run's files.

    Set before gunicorn starts, so every process it forks counts into it (prometheus_client
    chooses its storage when first imported); emptied, so counts restart with the server as
    Prometheus expects of a counter. One folder per server: the port tells servers apart.
    """
    folder = settings.api_metrics_dir or Path(tempfile.gettempdir()) / f"retinaq-api-metrics-{port}"
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
    return folder


@click.command(
    "worker", context_settings={"ignore_unknown_options": True, "allow_extra_args": True}
)
@click.option(
    "--serve",
    type=click.Choice(["all", "grading", "heatmaps", "webhooks"]),
    default="all",
    show_default=True,
    help="Which queues to consume: production runs heat maps on workers of their own, so "
    "they never take a grading worker's time. webhooks: deliver webhook events only, with "
    "a thread pool and no model (worker.webhooks).",
)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(serve: str, celery_args: tuple[str, ...]) -> None:
    """Run a worker: ``celery -A worker worker --pool=solo`` plus any extra options."""
    if serve == "webhooks":
        _webhooks_worker(celery_args)
        return
    require_extra("worker")
    require_schema_at_head()
    settings = get_settings()
    queues = {
        "all": [settings.queue_name, settings.heatmap_queue_name],
        "grading": [settings.queue_name],
        "heatmaps": [settings.heatmap_queue_name],
    }[serve]
    # In JSON, no start-up banner: every line the worker writes is a log line.
    quiet = ["--quiet"] if settings.log_format == "json" else []
    argv = ["celery", "-A", "worker", *quiet, "worker", "--queues", ",".join(queues)]
    if not any(a.startswith(("--pool", "-P")) for a in celery_args):
        argv.append("--pool=solo")
    if not any(a.startswith(("--loglevel", "-l")) for a in celery_args):
        argv.append(f"--loglevel={settings.log_level}")
    _exec([*argv, *celery_args])


def _webhooks_worker(celery_args: tuple[str, ...]) -> None:
    """Deliveries wait on receivers, so threads (``webhook_concurrency``) rather than solo."""
    require_schema_at_head()
    settings = get_settings()
    quiet = ["--quiet"] if settings.log_format == "json" else []
    argv = ["celery", "-A", "worker.webhooks.app", *quiet, "worker"]
    argv += ["--queues", settings.webhook_queue_name]
    if not any(a.startswith(("--pool", "-P")) for a in celery_args):
        argv += ["--pool=threads", f"--concurrency={settings.webhook_concurrency}"]
    if not any(a.startswith(("--loglevel", "-l")) for a in celery_args):
        argv.append(f"--loglevel={settings.log_level}")
    _exec([*argv, *celery_args])


@click.command("reconcile")
@click.option("--once", is_flag=True, help="Run one pass and exit.")
@click.option("--interval", type=float, help="Seconds between passes (default from settings).")
def reconcile(once: bool, interval: float | None) -> None:
    """Re-send grading for work the broker lost; fail images out of attempts."""
    from common.db.engine import make_sessionmaker
    from common.lifecycle.reconcile import OrphanSweeps, reconcile_once
    from common.queue import make_celery
    from common.storage import open_store

    require_schema_at_head()
    settings = get_settings()
    # Other libraries stay at WARNING; what the reconciler does is logged at the setting.
    configure_logging(settings.log_format, logging.WARNING)
    for name in ("common", __name__):
        logging.getLogger(name).setLevel(settings.log_level)
    engine = engine_from_settings(settings)
    sessions = make_sessionmaker(engine)
    celery = make_celery(settings, name="retinaq-reconciler")
    sweeps = OrphanSweeps(open_store(settings), settings.sweep_grace_s)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    pause = interval if interval is not None else settings.reconcile_interval_s
    log.info("reconciler: a pass every %gs", pause, extra={"interval_s": pause})
    try:
        while True:
            try:
                report = reconcile_once(sessions, celery, settings)
                if once:
                    click.echo(
                        f"requeued={report.requeued} lease_expired={report.lease_expired} "
                        f"exhausted={report.exhausted} "
                        f"heatmaps_requested={report.heatmaps_requested} "
                        f"webhooks_sent={report.webhooks_sent}"
                    )
                swept = sweeps.run_if_due(sessions)
                if once and swept is not None:
                    click.echo(
                        f"orphans_removed={swept.objects_removed} "
                        f"blob_rows_removed={swept.rows_removed} "
                        f"spools_removed={swept.spools_removed}"
                    )
            except Exception as error:  # a pass fails whole; the next one starts afresh
                if once:
                    raise
                log.error("reconciler pass failed: %s", error.__class__.__name__)
            if once or stop.wait(pause):
                break
    except KeyboardInterrupt:
        pass
    finally:
        engine.dispose()
