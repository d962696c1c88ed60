"""``retinaq submit / status / results``: the programme's side of the API."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.client import (
    ApiClient,
    ApiClientError,
    ImageFile,
    MetadataError,
    find_images,
    flatten_result,
    metadata_rows,
    write_results_csv,
)

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
) -> Any:
    """Upload with a progress bar on stderr."""
    columns = (
        TextColumn("uploading"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("upload", total=len(files))
        return client.submit(
            files,
            metadata=metadata,
            reference=reference,
            chunk_size=chunk_size,
            on_progress=lambda n: progress.advance(task, n),
        )


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
    wait_: bool,
    out: Path | None,
    timeout: float,
    api_url: str,
    api_key: str,
) -> None:
    """Upload images (files or folders) for grading; prints the batch URL."""
    files = find_images(list(paths))
    if not files:
        raise click.UsageError("no image files found in the given paths")
    try:
        rows_by_file = metadata_rows(metadata)
        with ApiClient(api_url, api_key) as client:
            submission = upload_with_progress(client, files, rows_by_file, reference, chunk_size)
            console.print(f"batch {submission.batch_id}: {submission.image_count} image(s)")
            click.echo(submission.status_url)
            if not wait_:
                return
            status = wait_with_progress(client, submission.status_url, len(files), timeout)
            rows = list(client.iter_results(submission.batch_id))
    except (ApiClientError, MetadataError) as error:
        raise click.ClickException(str(error)) from error
    console.print(f"batch {status['state']}: {status['counts']}")
    target = out or Path(f"results-{submission.batch_id}.csv")
    console.print(f"results written to {write_results_csv(rows, target)}")


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
