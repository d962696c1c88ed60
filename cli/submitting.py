"""``retinaq submit / status / results / export``: the programme's side of the API."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.client import (
    ApiClient,
    ApiClientError,
    ImageFile,
    MetadataError,
    find_images,
    metadata_rows,
)
from cli.csv_export import flatten_result, write_results_csv
from cli.journal import JOURNAL_NAME, JournalError, journal_path
from cli.retries import RetryPolicy
from cli.uploading import Submission, UploadEvents, UploadIncomplete, upload

console = Console(stderr=True)

api_url_option = click.option(
    "--api-url",
    envvar="RETINAQ_API_URL",
    default="http://127.0.0.1:8000",
    show_default=True,
    help="Base URL of the API (or RETINAQ_API_URL).",
)
api_key_option = click.option(
    "--api-key",
    envvar="RETINAQ_API_KEY",
    required=True,
    help="The programme's API key (or RETINAQ_API_KEY).",
)


def upload_with_progress(
    client: ApiClient,
    files: list[ImageFile],
    metadata: dict[str, dict[str, str]],
    reference: str | None,
    chunk_size: int,
    *,
    journal_at: Path | None = None,
    resume: bool = False,
    resume_command: str | None = None,
) -> Submission:
    """Upload with a progress bar on stderr; the batch's URL goes to stdout once it exists.

    A run that cannot finish raises a ClickException saying what the open batch holds and,
    given ``resume_command``, how to finish it.
    """
    columns = (
        TextColumn("uploading"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )

    progress = Progress(*columns, console=console)
    task = progress.add_task("upload", total=len(files))

    def announce(batch_id: str, status_url: str) -> None:
        console.print(f"batch {batch_id}: {status_url}")
        click.echo(status_url)
        progress.start()  # only once there is a batch: an early failure is one line

    events = UploadEvents(
        batch=announce, progress=lambda n: progress.advance(task, n), note=progress.console.print
    )
    try:
        return upload(
            client,
            files,
            metadata,
            reference=reference,
            chunk_size=chunk_size,
            journal_at=journal_at,
            resume=resume,
            events=events,
        )
    except UploadIncomplete as stopped:
        lines = [
            f"could not finish the upload: {stopped.cause}",
            f"batch {stopped.batch_id} is still open and holds {stopped.held} of the "
            f"{stopped.total} files: {stopped.status_url}",
        ]
        if resume_command and stopped.journal is not None:
            lines.append(f"to send the rest and close it, run: {resume_command}")
        raise click.ClickException("\n".join(lines)) from stopped
    finally:
        progress.stop()


def wait_with_progress(
    client: ApiClient,
    status_url: str,
    total: int,
    timeout: float,
    check: Callable[[], None] | None = None,
) -> Any:
    """Poll the status URL with a progress bar of finished images; ``check`` may abort."""
    columns = (TextColumn("grading  "), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("grade", total=total)

        def show(body: dict[str, Any]) -> None:
            counts = body["counts"]
            done = counts["graded"] + counts["ungradable"] + counts["failed"]
            progress.update(task, completed=done, total=body["image_count"])
            if check:
                check()

        return client.wait(status_url, timeout=timeout, on_status=show)


def results_table(rows: list[dict[str, Any]]) -> Table:
    """A readable table of per-image results."""
    table = Table(title="Screening results")
    for column in ("file", "grade", "grade name", "referable", "confidence", "state"):
        table.add_column(column)
    for row in rows:
        flat = flatten_result(row)
        table.add_row(
            flat["filename"],
            str(flat["grade"]),
            flat["grade_name"] or flat["ungradable_reasons"] or flat["error_code"],
            {"true": "yes", "false": "no"}.get(flat["referable"], ""),
            flat["confidence"],
            flat["state"],
        )
    return table


@click.command("submit")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True))
@click.option(
    "--metadata",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="CSV filename,patient_id,laterality; filename is the path inside the folder given "
    "(P001/left.jpg), or a bare name when only one file has it.",
)
@click.option("--reference", help="Your own reference for the batch.")
@click.option("--chunk-size", default=64, show_default=True, help="Images per upload request.")
@click.option(
    "--resume",
    is_flag=True,
    help="Finish the interrupted submission the journal records: send only what its batch "
    "lacks, then close it.",
)
@click.option(
    "--journal",
    "journal_file",
    type=click.Path(path_type=Path, dir_okay=False),
    help=f"Where to keep the journal [default: {JOURNAL_NAME} in the folder given, or in "
    "the files' common folder].",
)
@click.option(
    "--attempts",
    default=10,
    show_default=True,
    type=click.IntRange(1),
    help="Tries per request on 429, 502-504, refused or dropped connections and timeouts.",
)
@click.option(
    "--max-wait",
    default=60.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Longest pause between two tries, whatever Retry-After asks.",
)
@click.option(
    "--deadline",
    type=click.FloatRange(0),
    help="Seconds after which no request is retried; the open batch is reported instead.",
)
@click.option("--wait", "wait_", is_flag=True, help="Wait for grading to finish.")
@click.option("--out", type=click.Path(path_type=Path), help="With --wait: results CSV path.")
@click.option("--timeout", default=3600.0, show_default=True, help="With --wait: seconds.")
@api_url_option
@api_key_option
def submit(
    paths: tuple[Path, ...],
    metadata: Path | None,
    reference: str | None,
    chunk_size: int,
    resume: bool,
    journal_file: Path | None,
    attempts: int,
    max_wait: float,
    deadline: float | None,
    wait_: bool,
    out: Path | None,
    timeout: float,
    api_url: str,
    api_key: str,
) -> None:
    """Upload images (files or folders) for grading; prints the batch URL before sending.

    One open batch is filled chunk by chunk and closed. Every request carries an
    Idempotency-Key and is retried when the API is briefly away or asks to slow down; a
    journal beside the folder lets --resume finish a run that stopped.
    """
    files = find_images(list(paths))
    if not files:
        raise click.UsageError("no image files found in the given paths")
    journal_at = journal_file or journal_path(list(paths))
    policy = RetryPolicy(
        attempts=attempts,
        max_wait_s=max_wait,
        deadline=None if deadline is None else time.monotonic() + deadline,
        on_retry=lambda text: console.print(f"[yellow]{escape(text)}[/yellow]"),
    )
    command = _resume_command(paths, metadata, journal_file, api_url)
    try:
        rows_by_file = metadata_rows(metadata)
        with ApiClient(api_url, api_key, retry=policy) as client:
            submission = upload_with_progress(
                client,
                files,
                rows_by_file,
                reference,
                chunk_size,
                journal_at=journal_at,
                resume=resume,
                resume_command=command,
            )
            console.print(
                f"batch {submission.batch_id} closed: {submission.image_count} image(s), "
                f"{submission.sent} sent by this run"
            )
            if not wait_:
                return
            status = wait_with_progress(client, submission.status_url, len(files), timeout)
            rows = list(client.iter_results(submission.batch_id))
    except (ApiClientError, MetadataError, JournalError) as error:
        raise click.ClickException(str(error)) from error
    except OSError as error:
        raise click.ClickException(f"cannot read {error.filename}: {error.strerror}") from error
    console.print(f"batch {status['state']}: {status['counts']}")
    target = out or Path(f"results-{submission.batch_id}.csv")
    console.print(f"results written to {write_results_csv(rows, target)}")


def _resume_command(
    paths: tuple[Path, ...], metadata: Path | None, journal_file: Path | None, api_url: str
) -> str:
    """The command that finishes this submission (the API key comes from the environment)."""
    argv = ["retinaq", "submit", *map(str, paths)]
    if metadata is not None:
        argv += ["--metadata", str(metadata)]
    if journal_file is not None:
        argv += ["--journal", str(journal_file)]
    return shlex.join([*argv, "--api-url", api_url, "--resume"])


@click.command("status")
@click.argument("batch")
@api_url_option
@api_key_option
def status(batch: str, api_url: str, api_key: str) -> None:
    """Show a batch's state and counts (BATCH is its id or status URL)."""
    try:
        with ApiClient(api_url, api_key) as client:
            body, _ = client.status(batch)
    except ApiClientError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"{body['id']}  {body['state']}  images={body['image_count']}")
    click.echo("  ".join(f"{k}={v}" for k, v in body["counts"].items()))
    click.echo(f"referable={body['referable_count']}  grades={body['grades']}")


@click.command("results")
@click.argument("batch_id")
@click.option("--out", type=click.Path(path_type=Path), help="Write a CSV instead of a table.")
@api_url_option
@api_key_option
def results(batch_id: str, out: Path | None, api_url: str, api_key: str) -> None:
    """Print (or write as CSV) a batch's per-image results."""
    try:
        with ApiClient(api_url, api_key) as client:
            rows = list(client.iter_results(batch_id))
    except ApiClientError as error:
        raise click.ClickException(str(error)) from error
    if out:
        click.echo(str(write_results_csv(rows, out)))
    else:
        Console().print(results_table(rows))


EXPORTS = {"csv": ("results.csv", "results-{}.csv"), "fhir": ("fhir", "batch-{}.fhir.json")}


@click.command("export")
@click.argument("batch_id")
@click.option(
    "--format",
    "format_",
    type=click.Choice(sorted(EXPORTS)),
    default="csv",
    show_default=True,
    help="csv: the API's results CSV; fhir: its FHIR R4 Bundle (every page joined).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    help="File to write [default: results-BATCH.csv or batch-BATCH.fhir.json].",
)
@api_url_option
@api_key_option
def export(batch_id: str, format_: str, out: Path | None, api_url: str, api_key: str) -> None:
    """Fetch a batch's results as the API renders them (CSV or FHIR) into a file."""
    route, default_name = EXPORTS[format_]
    target = out or Path(default_name.format(batch_id))
    policy = RetryPolicy(attempts=5, max_wait_s=30.0)
    try:
        with ApiClient(api_url, api_key, retry=policy) as client:
            if format_ == "csv":
                client.download(f"/v1/batches/{batch_id}/{route}", target)
            else:
                bundle = client.fhir_bundle(batch_id)
                _write_json(bundle, target)
    except ApiClientError as error:
        raise click.ClickException(str(error)) from error
    except OSError as error:
        raise click.ClickException(f"cannot write {target}: {error.strerror}") from error
    click.echo(str(target))


def _write_json(document: dict[str, Any], out: Path) -> None:
    """Write JSON through a temporary file, so a failure never leaves half a Bundle."""
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.part")
    temporary.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    temporary.replace(out)
