"""``retinaq db upgrade``, ``retinaq api`` and ``retinaq worker``: the server processes."""

from __future__ import annotations

import os
import shutil
import sys

import click

from common.db import engine_from_settings
from common.schema import SchemaNotAtHead, assert_schema_at_head, upgrade_to_head
from common.settings import get_settings


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
def api(host: str, port: int, workers: int) -> None:
    """Serve the HTTP API with gunicorn (never Flask's development server)."""
    require_schema_at_head()
    _exec(
        [
            "gunicorn",
            "--bind",
            f"{host}:{port}",
            "--workers",
            str(workers),
            "--timeout",
            "600",
            "--graceful-timeout",
            "30",
            "--access-logfile",
            "-",
            "api.wsgi:app",
        ]
    )


@click.command(
    "worker", context_settings={"ignore_unknown_options": True, "allow_extra_args": True}
)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(celery_args: tuple[str, ...]) -> None:
    """Run a grading worker: ``celery -A worker worker --pool=solo`` plus any extra options."""
    require_schema_at_head()
    settings = get_settings()
    argv = ["celery", "-A", "worker", "worker", "--queues", settings.queue_name]
    if not any(a.startswith(("--pool", "-P")) for a in celery_args):
        argv.append("--pool=solo")
    if not any(a.startswith(("--loglevel", "-l")) for a in celery_args):
        argv.append(f"--loglevel={settings.log_level}")
    _exec([*argv, *celery_args])
