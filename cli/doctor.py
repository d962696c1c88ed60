"""``retinaq doctor``: can this host, with these settings, take part in the deployment?

Each check says ``ok``, ``FAIL`` or ``skip`` and why, one line each: the database answers
and is at the Alembic head, the broker answers, the image store takes, returns and deletes
a probe object from this host, the model this host's workers would serve matches its
manifest's SHA-256, and a GPU is visible where ``RETINAQ_EXPECT_GPU`` says one should be.
Exit status 0 only when no check failed; a skipped check is not a failure.
"""

from __future__ import annotations

import importlib.util
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import click
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.orm import Session

from common.db.engine import engine_from_settings
from common.db.schema import SchemaNotAtHead, assert_schema_at_head
from common.modelling.activation import Activation, active_model, serving_model_file
from common.modelling.manifest import ManifestError, load_verified_manifest
from common.queue import make_celery
from common.settings import Settings, get_settings
from common.storage import open_store

BROKER_TIMEOUT_S = 5
PROBE_PREFIX = b"retinaq doctor probe "


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    status: str  # "ok", "FAIL" or "skip"
    reason: str

    @property
    def failed(self) -> bool:
        """Whether this check makes the whole run fail."""
        return self.status == "FAIL"


@dataclass
class _Findings:
    """What one check learns that a later one uses: the activation read from the database."""

    database_ok: bool = False
    activation: Activation | None = None


def check_database(settings: Settings, findings: _Findings) -> Check:
    """Reachable, at the Alembic head, and (then) which model is activated."""
    engine = None
    try:
        engine = engine_from_settings(settings)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        assert_schema_at_head(engine)
        with Session(engine) as session:
            findings.activation = active_model(session)
        findings.database_ok = True
        return Check("database", "ok", f"{engine.url.render_as_string()} is at the schema head")
    except SchemaNotAtHead as error:
        return Check("database", "FAIL", str(error))
    except Exception as error:  # any driver's refusal: name it, never a traceback
        return Check("database", "FAIL", f"cannot connect: {_first_line(error)}")
    finally:
        if engine is not None:
            engine.dispose()


def check_broker(settings: Settings, findings: _Findings) -> Check:
    """The broker accepts a connection within ``BROKER_TIMEOUT_S``."""
    celery = make_celery(settings, name="retinaq-doctor")
    try:
        with celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=BROKER_TIMEOUT_S)
            where = connection.as_uri()
        return Check("broker", "ok", f"{where} answers")
    except Exception as error:
        return Check("broker", "FAIL", f"cannot connect: {_first_line(error)}")


def check_storage(settings: Settings, findings: _Findings) -> Check:
    """Write a probe object the way uploads do, read it back, and remove it."""
    data = PROBE_PREFIX + secrets.token_hex(16).encode()
    try:
        store = open_store(settings)
        spool = store.spool_bytes(data)
        store.place(spool)
        key = store.relative_path(spool.sha256)
        try:
            if store.read(key) != data:
                return Check("storage", "FAIL", f"{settings.storage_url}: read back other bytes")
        finally:
            store.remove(spool.sha256)
        return Check("storage", "ok", f"{settings.storage_url}: wrote, read back and removed")
    except Exception as error:
        return Check("storage", "FAIL", f"{settings.storage_url}: {_first_line(error)}")


def check_model(settings: Settings, findings: _Findings) -> Check:
    """The file this host's workers would serve exists and matches its manifest's SHA-256."""
    path = serving_model_file(settings, findings.activation)
    chosen = "activated" if findings.activation is not None else "settings'"
    if not findings.database_ok:
        chosen += " (the database could not say which is activated)"
    try:
        manifest = load_verified_manifest(path)
    except ManifestError as error:
        return Check("model", "FAIL", f"{chosen} model: {error}")
    if findings.activation is not None and manifest.sha256 != findings.activation.sha256:
        return Check(
            "model",
            "FAIL",
            f"{path} has SHA-256 {manifest.sha256}, but {findings.activation.name} was "
            f"activated with {findings.activation.sha256}: this host's registry differs",
        )
    return Check(
        "model",
        "ok",
        f"{chosen} model {manifest.name} {manifest.version} matches its manifest "
        f"(sha256 {manifest.sha256[:12]})",
    )


def check_gpu(settings: Settings, findings: _Findings) -> Check:
    """A GPU visible to TensorFlow where one is expected; skipped where none is."""
    if not settings.expect_gpu:
        return Check("gpu", "skip", "RETINAQ_EXPECT_GPU is not set: no GPU expected on this host")
    if importlib.util.find_spec("tensorflow") is None:
        return Check("gpu", "skip", "TensorFlow is not installed here (the worker extra)")
    from worker.ml.model import configure_devices  # TensorFlow: only now, and only here

    gpus = [name for name in configure_devices(expect_gpu=True) if ":GPU:" in name]
    if not gpus:
        return Check("gpu", "FAIL", "RETINAQ_EXPECT_GPU=true but TensorFlow sees no GPU")
    return Check("gpu", "ok", ", ".join(gpus))


CHECKS: tuple[Callable[[Settings, _Findings], Check], ...] = (
    check_database,
    check_broker,
    check_storage,
    check_model,
    check_gpu,
)


def run_checks(settings: Settings) -> list[Check]:
    """Every check in order; none stops the others."""
    findings = _Findings()
    return [check(settings, findings) for check in CHECKS]


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


@click.command("doctor")
def doctor() -> None:
    """Check this host: database at head, broker, storage, model file, GPU.

    One line per check, ``ok``, ``FAIL`` or ``skip`` with the reason. Exit status 0 when no
    check failed, 1 when any did.
    """
    try:
        settings = get_settings()
    except ValidationError as error:
        click.echo(f"FAIL  settings  {'; '.join(e['msg'] for e in error.errors())}")
        raise SystemExit(1) from error
    results = run_checks(settings)
    width = max(len(result.name) for result in results)
    for result in results:
        click.echo(f"{result.status:<4}  {result.name:<{width}}  {result.reason}")
    failed = [result.name for result in results if result.failed]
    if failed:
        click.echo(f"{len(failed)} check(s) failed: {', '.join(failed)}", err=True)
        raise SystemExit(1)
