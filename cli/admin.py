"""``retinaq admin``: programmes, API keys, retention and requeueing, straight against the
database (``retinaq admin models`` is :mod:`cli.admin_models`)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from sqlalchemy import and_, func, or_, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from common.access.apikeys import create_programme, issue_api_key, revoke_api_key
from common.db.engine import engine_from_settings, make_sessionmaker
from common.db.schema import SchemaNotAtHead, assert_schema_at_head
from common.db.tables import (
    PENDING_IMAGE_STATES,
    ApiKey,
    Batch,
    BatchStat,
    BatchState,
    Image,
    Programme,
    ProgrammeScheme,
    utcnow,
)
from common.lifecycle.requeue import (
    BatchCancelled,
    BatchNotFound,
    RequeueReport,
    TasksNotSent,
    requeue_batch,
)
from common.lifecycle.retention import purge_older_than
from common.queue import make_celery
from common.screening.programmes import save_scheme
from common.screening.schemes import (
    DEFAULT_SCHEME,
    SCHEMES,
    GradingScheme,
    SchemeError,
    build_scheme,
    parse_pairs,
    scheme_from_row,
)
from common.settings import Settings, get_settings
from common.storage import open_store
from common.storage.blobs import sweep_orphans

DEFAULT_LIMIT = "default"
EXPIRES_IN_HELP = "The key stops working after this long: Nd (days) or Nh (hours), e.g. 90d."


@contextmanager
def admin_session() -> Iterator[Session]:
    """One transaction on a database whose schema is current; the engine is released after."""
    engine = engine_from_settings(get_settings())
    try:
        assert_schema_at_head(engine)
        with make_sessionmaker(engine).begin() as session:
            yield session
    except SchemaNotAtHead as error:
        raise click.ClickException(str(error)) from error
    except OperationalError as error:
        raise click.ClickException(unreachable_database(error)) from error
    finally:
        engine.dispose()


def unreachable_database(error: OperationalError) -> str:
    """One line for a database that did not answer, instead of a driver's traceback."""
    lines = str(error.orig or error).strip().splitlines()
    return f"cannot reach the database: {lines[0] if lines else type(error).__name__}"


class _Age(click.ParamType):
    """An age such as ``90d`` (days), ``12h`` (hours) or ``30m`` (minutes), at least one unit."""

    name = "age"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, timedelta):
            return value
        match = re.fullmatch(r"([0-9]+)([dhm])", str(value).strip().lower())
        if match is None or int(match[1]) < 1:
            self.fail(f"{value!r} is not an age like 90d, 12h or 30m", param, ctx)
        unit = {"d": "days", "h": "hours", "m": "minutes"}[match[2]]
        return timedelta(**{unit: int(match[1])})


class _Limit(click.ParamType):
    """A quota: a positive whole number, or ``default`` for the deployment-wide setting."""

    name = "limit"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int):
            return value
        text = str(value).strip().lower()
        if text == DEFAULT_LIMIT:
            return DEFAULT_LIMIT
        if not text.isdigit() or int(text) < 1:
            self.fail(f"{value!r} is not a positive whole number or 'default'", param, ctx)
        return int(text)


@click.group("admin")
def admin() -> None:
    """Manage programmes, their API keys, data retention, requeueing and the served model."""


def _expiry(expires_in: timedelta | None) -> datetime | None:
    return None if expires_in is None else utcnow() + expires_in


def _expiry_note(expires_at: datetime | None) -> str:
    if expires_at is None:
        return "no expiry"
    return f"expires {_aware(expires_at).astimezone(UTC):%Y-%m-%d %H:%M} UTC"


@admin.command("create-programme")
@click.argument("name")
@click.option("--expires-in", type=_Age(), help=EXPIRES_IN_HELP)
def create_programme_command(name: str, expires_in: timedelta | None) -> None:
    """Create a programme; its API key is printed once, alone on the last line."""
    expires_at = _expiry(expires_in)
    with admin_session() as session:
        if session.scalar(select(Programme.id).where(Programme.name == name)):
            raise click.ClickException(f"a programme named {name!r} already exists")
        programme, key = create_programme(session, name, expires_at)
    click.echo(
        f"programme {name} ({programme.id}); key prefix {key.prefix}, {_expiry_note(expires_at)}",
        err=True,
    )
    click.echo("store this API key now; it cannot be shown again:", err=True)
    click.echo(key.secret)


@admin.command("create-key")
@click.argument("programme_name")
@click.option("--expires-in", type=_Age(), help=EXPIRES_IN_HELP)
def create_key(programme_name: str, expires_in: timedelta | None) -> None:
    """Issue another key for a programme (printed once, alone on the last line)."""
    expires_at = _expiry(expires_in)
    with admin_session() as session:
        programme = session.scalar(select(Programme).where(Programme.name == programme_name))
        if programme is None:
            raise click.ClickException(f"no programme named {programme_name!r}")
        key = issue_api_key(session, programme, expires_at)
    click.echo(f"key prefix {key.prefix}, {_expiry_note(expires_at)}", err=True)
    click.echo(key.secret)


@admin.command("list-keys")
def list_keys() -> None:
    """List keys by prefix (never the key itself), with their state and expiry."""
    now = utcnow()
    with admin_session() as session:
        rows = session.execute(
            select(
                Programme.name,
                ApiKey.prefix,
                ApiKey.created_at,
                ApiKey.revoked_at,
                ApiKey.expires_at,
            )
            .join(ApiKey, ApiKey.programme_id == Programme.id)
            .order_by(Programme.name, ApiKey.created_at)
        ).all()
    for name, prefix, created, revoked, expires in rows:
        if revoked:
            state = f"revoked {revoked:%Y-%m-%d}"
        elif expires is not None and _aware(expires) <= now:
            state = "expired"
        else:
            state = "active"
        click.echo(
            f"{prefix}  {name}  created {created:%Y-%m-%d}  {state}  {_expiry_note(expires)}"
        )


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes, which we wrote as UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@admin.command("revoke-key")
@click.argument("prefix")
def revoke_key(prefix: str) -> None:
    """Revoke the key with this prefix; it stops working at once."""
    with admin_session() as session:
        if not revoke_api_key(session, prefix):
            raise click.ClickException(f"no active key with prefix {prefix!r}")
    click.echo(f"revoked {prefix}")


@admin.command("set-quota")
@click.argument("programme_name")
@click.option(
    "--max-pending",
    type=_Limit(),
    help="Most images queued or processing at once (a number, or 'default').",
)
@click.option(
    "--max-per-minute",
    type=_Limit(),
    help="Most images submitted in any 60 seconds (a number, or 'default').",
)
def set_quota(
    programme_name: str, max_pending: int | str | None, max_per_minute: int | str | None
) -> None:
    """Set a programme's quotas; 'default' returns one to the deployment-wide setting."""
    if max_pending is None and max_per_minute is None:
        raise click.UsageError("give --max-pending, --max-per-minute or both")
    settings = get_settings()
    with admin_session() as session:
        programme = session.scalar(select(Programme).where(Programme.name == programme_name))
        if programme is None:
            raise click.ClickException(f"no programme named {programme_name!r}")
        if max_pending is not None:
            programme.max_pending_images = _stored_limit(max_pending)
        if max_per_minute is not None:
            programme.max_images_per_minute = _stored_limit(max_per_minute)
        pending, per_minute = programme.max_pending_images, programme.max_images_per_minute
    click.echo(
        f"{programme_name}: max pending images "
        f"{_quota_note(pending, settings.default_max_pending_images)}, "
        f"max images per minute "
        f"{_quota_note(per_minute, settings.default_max_images_per_minute)}"
    )


def _stored_limit(value: int | str) -> int | None:
    """NULL in the database means the deployment-wide default applies."""
    return None if value == DEFAULT_LIMIT else int(value)


def _quota_note(value: int | None, default: int) -> str:
    return f"{default} (default)" if value is None else str(value)


@admin.command("purge")
@click.option(
    "--older-than",
    "age",
    type=_Age(),
    required=True,
    help="Purge batches created longer ago than this: Nd (days) or Nh (hours), e.g. 90d.",
)
def purge(age: timedelta) -> None:
    """Delete old batches, their results and image files no other image shares."""
    settings = get_settings()
    cutoff = utcnow() - age
    engine = engine_from_settings(settings)
    try:
        assert_schema_at_head(engine)
        # A plain session: the purge commits once per batch, before removing its files.
        with make_sessionmaker(engine)() as session:
            report = purge_older_than(session, open_store(settings), cutoff)
    except SchemaNotAtHead as error:
        raise click.ClickException(str(error)) from error
    finally:
        engine.dispose()
    click.echo(f"purged batches created before {cutoff:%Y-%m-%d %H:%M} UTC")
    click.echo(f"batches deleted: {report.batches_deleted}")
    click.echo(f"batches cancelled first: {report.batches_cancelled}")
    click.echo(f"images deleted: {report.images_deleted}")
    click.echo(f"images cancelled first: {report.images_cancelled}")
    click.echo(f"results deleted: {report.results_deleted}")
    click.echo(f"image files removed: {report.files_removed}")
    click.echo(f"image files kept (shared with other images): {report.files_kept}")


@admin.command("sweep")
@click.option(
    "--grace",
    type=_Age(),
    help="Leave bytes younger than this alone, as an upload in flight may be about to name "
    "them (default: RETINAQ_SWEEP_GRACE_S).",
)
def sweep(grace: timedelta | None) -> None:
    """Remove stored image and heat-map bytes that no row names (what a crash left behind)."""
    settings = get_settings()
    grace_s = grace.total_seconds() if grace is not None else float(settings.sweep_grace_s)
    engine = engine_from_settings(settings)
    try:
        assert_schema_at_head(engine)
        report = sweep_orphans(make_sessionmaker(engine), open_store(settings), grace_s)
    except SchemaNotAtHead as error:
        raise click.ClickException(str(error)) from error
    finally:
        engine.dispose()
    click.echo(f"stored objects older than {grace_s:g}s checked: {report.objects_checked}")
    click.echo(f"unnamed objects removed: {report.objects_removed}")
    click.echo(f"blob rows removed: {report.rows_removed}")
    click.echo(f"abandoned upload spools removed: {report.spools_removed}")


@dataclass(frozen=True)
class ProgrammeSummary:
    """One row of ``retinaq admin programmes``."""

    name: str
    id: str
    max_pending_images: int
    max_pending_images_default: bool
    max_images_per_minute: int
    max_images_per_minute_default: bool
    pending_images: int
    last_activity_at: str | None
    active_keys: int
    keys: int
    scheme: str = DEFAULT_SCHEME.name
    scheme_mapping: tuple[str, ...] = DEFAULT_SCHEME.mapping
    recall_months: dict[str, int] | None = None


def programme_summaries(session: Session, settings: Settings) -> list[ProgrammeSummary]:
    """Every programme with its effective quotas, pending images, last activity and keys.

    Pending comes from the per-batch counters (``batch_stats``) of unfinished batches, and
    last activity from index probes, so the cost follows programmes and batches, never the
    number of images.
    """
    now = utcnow()
    unfinished = (BatchState.OPEN, BatchState.QUEUED, BatchState.PROCESSING)
    pending = (
        select(func.coalesce(func.sum(BatchStat.value), 0))
        .join(Batch, Batch.id == BatchStat.batch_id)
        .where(
            Batch.programme_id == Programme.id,
            Batch.state.in_(unfinished),
            BatchStat.stat.in_([state.value for state in PENDING_IMAGE_STATES]),
        )
        .scalar_subquery()
    )
    last_batch = (
        select(func.max(Batch.created_at))
        .where(Batch.programme_id == Programme.id)
        .scalar_subquery()
    )
    last_image = (
        select(func.max(Image.created_at))
        .where(Image.programme_id == Programme.id)
        .scalar_subquery()
    )
    usable = and_(
        ApiKey.revoked_at.is_(None), or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now)
    )
    keys = select(func.count()).where(ApiKey.programme_id == Programme.id).scalar_subquery()
    active_keys = (
        select(func.count()).where(ApiKey.programme_id == Programme.id, usable).scalar_subquery()
    )
    rows = session.execute(
        select(
            Programme.name,
            Programme.id,
            Programme.max_pending_images,
            Programme.max_images_per_minute,
            pending,
            last_batch,
            last_image,
            active_keys,
            keys,
        ).order_by(Programme.name)
    ).all()
    schemes = {
        row.programme_id: scheme_from_row(row.scheme, row.mapping, row.recall)
        for row in session.scalars(select(ProgrammeScheme))
    }
    summaries = []
    for row in rows:
        columns: tuple[Any, ...] = tuple(row)
        scheme = schemes.get(columns[1], DEFAULT_SCHEME)
        name, programme_id, max_pending, per_minute, waiting, batch_at, image_at = columns[:7]
        moments = [_aware(moment) for moment in (batch_at, image_at) if moment is not None]
        summaries.append(
            ProgrammeSummary(
                name=name,
                id=str(programme_id),
                max_pending_images=max_pending or settings.default_max_pending_images,
                max_pending_images_default=max_pending is None,
                max_images_per_minute=per_minute or settings.default_max_images_per_minute,
                max_images_per_minute_default=per_minute is None,
                pending_images=int(waiting),
                last_activity_at=max(moments).isoformat() if moments else None,
                active_keys=int(columns[7]),
                keys=int(columns[8]),
                scheme=scheme.name,
                scheme_mapping=scheme.mapping,
                recall_months=dict(scheme.recall),
            )
        )
    return summaries


@admin.command("programmes")
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")
def programmes(as_json: bool) -> None:
    """List programmes: quotas, pending images, last activity and API keys.

    Exit status 0; 1 when the database cannot be read or is not at the schema head.
    """
    settings = get_settings()
    with admin_session() as session:
        summaries = programme_summaries(session, settings)
    if as_json:
        click.echo(json.dumps({"programmes": [asdict(s) for s in summaries]}, indent=2))
        return
    if not summaries:
        click.echo("no programmes (create one with `retinaq admin create-programme NAME`)")
        return
    header = (
        "programme",
        "pending",
        "max pending",
        "max/min",
        "keys",
        "last activity (UTC)",
        "scheme (recall months)",
    )
    lines = [header]
    for s in summaries:
        lines.append(
            (
                s.name,
                str(s.pending_images),
                _quota_cell(s.max_pending_images, s.max_pending_images_default),
                _quota_cell(s.max_images_per_minute, s.max_images_per_minute_default),
                f"{s.active_keys} active of {s.keys}",
                "never"
                if s.last_activity_at is None
                else s.last_activity_at[:19].replace("T", " "),
                _scheme_cell(s.scheme, s.recall_months or {}),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))


def _scheme_cell(scheme: str, recall: dict[str, int]) -> str:
    return f"{scheme} ({' '.join(f'{key}={months}' for key, months in sorted(recall.items()))})"


def _describe_scheme(scheme: GradingScheme) -> str:
    mapping = " ".join(f"{grade}->{code}" for grade, code in enumerate(scheme.mapping))
    recall = " ".join(f"{key}={months}" for key, months in sorted(scheme.recall.items()))
    return f"{scheme.name}; ICDR grade to code {mapping}; recall months {recall}"


@admin.command("set-scheme")
@click.argument("programme_name")
@click.option(
    "--scheme", "name", type=click.Choice(SCHEMES), required=True, help="Codes to report."
)
@click.option(
    "--recall",
    help="Months to the next screening per non-referable code, e.g. r0=12,r0_repeat=24,r1=12 "
    "(<code>_repeat: when the patient's previous screening ended in the same code); "
    "codes not named keep the scheme's default.",
)
@click.option(
    "--map",
    "mapping",
    help="ICDR grade to code, e.g. 2=R1 (default nhs-desp: 0=R0,1=R1,2=R2,3=R2,4=R3A).",
)
def set_scheme(programme_name: str, name: str, recall: str | None, mapping: str | None) -> None:
    """Choose a programme's grading scheme: the codes its results use and recall intervals.

    Setting a scheme replaces the previous one whole: options not given take the scheme's
    defaults. docs/domain.md explains the default ICDR to NHS DESP mapping.
    """
    try:
        months = (
            {
                key: _whole_number(value, key)
                for key, value in parse_pairs(recall, "--recall").items()
            }
            if recall
            else None
        )
        grades = (
            {
                _whole_number(key, "grade"): value.upper()
                for key, value in parse_pairs(mapping, "--map").items()
            }
            if mapping
            else None
        )
        scheme = build_scheme(name, grades, months)
    except SchemeError as error:
        raise click.BadParameter(str(error)) from error
    with admin_session() as session:
        programme = session.scalar(select(Programme).where(Programme.name == programme_name))
        if programme is None:
            raise click.ClickException(f"no programme named {programme_name!r}")
        save_scheme(session, programme.id, scheme)
    click.echo(f"{programme_name}: {_describe_scheme(scheme)}")


def _whole_number(text: str, what: str) -> int:
    if not text.strip().isdigit():
        raise SchemeError(f"{what} {text!r} is not a whole number")
    return int(text)


def _moment_cell(iso: str | None) -> str:
    return "never" if iso is None else iso[:19].replace("T", " ")


def _quota_cell(value: int, is_default: bool) -> str:
    return f"{value} (default)" if is_default else str(value)


@admin.command("requeue")
@click.argument("batch_id", type=click.UUID)
@click.option(
    "--failed",
    is_flag=True,
    help="Also give the batch's failed images a fresh start (attempts and error cleared).",
)
def requeue(batch_id: uuid.UUID, failed: bool) -> None:
    """Send a batch's pending images back to work now.

    Queued images are sent again and images whose lease ran out (a dead worker's) are
    handed back; images under a live lease are being graded and are left alone. Exit
    status 0 when done; 1 for an unknown, purged or cancelled batch, or a database or
    broker that cannot be reached; 2 for a malformed batch id.
    """
    settings = get_settings()
    engine = engine_from_settings(settings)
    unsent = None
    try:
        assert_schema_at_head(engine)
        celery = make_celery(settings, name="retinaq-admin")
        report = requeue_batch(make_sessionmaker(engine), celery, settings, batch_id, failed=failed)
    except (SchemaNotAtHead, BatchNotFound, BatchCancelled) as error:
        raise click.ClickException(str(error)) from error
    except OperationalError as error:
        raise click.ClickException(unreachable_database(error)) from error
    except TasksNotSent as error:
        report, unsent = error.report, error
    finally:
        engine.dispose()
    _print_requeue(report, failed)
    if unsent is not None:
        raise click.ClickException(
            f"{unsent}; the images are queued in the database, and the reconciler sends them "
            f"after RETINAQ_REQUEUE_AFTER_S ({settings.requeue_after_s} s), or run this again"
        )


def _print_requeue(report: RequeueReport, failed: bool) -> None:
    batch_id = report.batch_id
    click.echo(f"batch {batch_id}")
    click.echo(f"queued images sent again: {report.queued_resent}")
    click.echo(f"expired leases handed back: {report.leases_handed_back}")
    if failed:
        click.echo(f"failed images restarted: {report.failed_restarted}")
    click.echo(f"out of attempts, now failed: {report.exhausted}")
    click.echo(f"being graded now (live lease), left alone: {report.still_processing}")
    click.echo(f"batch state: {report.batch_state.value}")


@admin.command("set-webhook")
@click.argument("programme_name")
@click.argument("url", required=False)
@click.option(
    "--on-referable/--no-on-referable",
    default=None,
    help="Also send result.referable for each referable result (kept when not given).",
)
@click.option("--rotate-secret", is_flag=True, help="Make a new signing secret, shown once.")
@click.option("--clear-url", is_flag=True, help="Remove the default URL.")
def set_webhook(
    programme_name: str,
    url: str | None,
    on_referable: bool | None,
    rotate_secret: bool,
    clear_url: bool,
) -> None:
    """Set a programme's webhooks: the default callback URL for its batches (a batch's own
    callback_url wins) and the events sent. The first call makes the signing secret and
    prints it once; so does --rotate-secret."""
    from common.webhooks.addresses import CallbackRefused, check_callback_url, parse_networks
    from common.webhooks.programmes import configure_webhook

    if url is not None and clear_url:
        raise click.UsageError("give a URL or --clear-url, not both")
    settings = get_settings()
    if url is not None:
        try:
            check_callback_url(
                url,
                allow_http=settings.webhook_allow_http,
                allowed=parse_networks(settings.webhook_allowed_networks),
            )
        except CallbackRefused as error:
            raise click.BadParameter(str(error), param_hint="URL") from error
    with admin_session() as session:
        programme = session.scalar(select(Programme).where(Programme.name == programme_name))
        if programme is None:
            raise click.ClickException(f"no programme named {programme_name!r}")
        setup = configure_webhook(
            session,
            programme.id,
            url=url,
            clear_url=clear_url,
            on_referable=on_referable,
            rotate_secret=rotate_secret,
        )
    events = "batch.completed, result.referable" if setup.on_referable else "batch.completed"
    click.echo(f"{programme_name}: default URL {setup.url or '(none)'}; events {events}")
    if setup.new_secret is not None:
        click.echo(f"signing secret (shown once, store it now): {setup.new_secret}")
