"""An upload that survives failures: one open batch, filled chunk by chunk, journalled, closed.

Every submission creates an open batch first, so its id is known (and shown) before the
first image is sent, then adds the files in chunks and closes the batch. Each request
carries an ``Idempotency-Key`` and is retried as :mod:`cli.retries` says; before a chunk
is sent again the batch's image listing is read, and a chunk the API already holds (its
answer was lost with the connection) is not sent twice. The journal (:mod:`cli.journal`)
keeps the batch and the keys across runs: ``resume`` reads the batch's listing and sends
only the files it lacks, so a file reaches the batch once however the run was broken.
When a run cannot finish, :class:`UploadIncomplete` says what the open batch holds.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from cli.client import ApiClient, ApiClientError, ImageFile, resolve_metadata
from cli.journal import (
    ChunkRecord,
    FileRecord,
    Journal,
    JournalError,
    file_record,
    load_journal,
    metadata_digest,
)

OPEN = "open"


@dataclass(frozen=True)
class Submission:
    """A closed batch: its id, status URL and size, and how many files this run sent."""

    batch_id: str
    status_url: str
    image_count: int
    sent: int
    already_held: int


@dataclass(frozen=True)
class UploadEvents:
    """What the caller shows: the batch once known, files done, and retry notices."""

    batch: Callable[[str, str], None] = lambda _id, _url: None
    progress: Callable[[int], None] = lambda _n: None
    note: Callable[[str], None] = lambda _text: None


class UploadIncomplete(RuntimeError):
    """The run stopped with its batch open; the journal (if any) lets ``--resume`` finish."""

    def __init__(
        self,
        cause: str,
        batch_id: str,
        status_url: str,
        held: int,
        total: int,
        journal: Path | None,
    ) -> None:
        super().__init__(cause)
        self.cause = cause
        self.batch_id = batch_id
        self.status_url = status_url
        self.held = held
        self.total = total
        self.journal = journal


def upload(
    client: ApiClient,
    files: list[ImageFile],
    metadata: dict[str, dict[str, str]],
    *,
    reference: str | None,
    chunk_size: int,
    journal_at: Path | None = None,
    resume: bool = False,
    events: UploadEvents | None = None,
) -> Submission:
    """Upload ``files`` into one batch and close it (see the module doc).

    ``metadata`` is :func:`cli.client.metadata_rows`' output, resolved against all the
    files before anything is sent. Raises MetadataError or JournalError before the batch
    is touched, ApiClientError when no batch could be created, UploadIncomplete after.
    """
    events = events or UploadEvents()
    resolved = resolve_metadata(metadata, files)
    journal = _journal(client, files, resolved, reference, journal_at, resume)
    by_name = {file.name: file for file in files}
    if journal.batch_id is None:
        try:
            body, status_url = client.create_open_batch(journal.reference, journal.create_key)
        except ApiClientError:
            # Nothing was sent: a mistyped URL or a refused key must not block the next run.
            journal.remove()
            raise
        journal.batch_id, journal.status_url = body["id"], status_url
        journal.save()
        held: dict[str, str] = {}
    else:
        body, _ = client.status(journal.status_url or journal.batch_id)
        held = client.held_images(journal.batch_id)
        _check_held(journal, held)
    batch_id, status_url = journal.batch_id, journal.status_url or ""
    events.batch(batch_id, status_url)
    already = sum(1 for name in by_name if name in held)
    if body["state"] != OPEN:
        return _already_closed(journal, body, len(files), already)

    chunks = _plan(journal, [f.name for f in files if f.name not in held], chunk_size)
    journal.save()
    if already:
        events.note(f"batch {batch_id} already holds {already} of these files; not sending them")
    events.progress(already)
    sent = 0
    try:
        for chunk in chunks:
            images = [by_name[name] for name in chunk.files]
            client.add_images(
                body["links"]["add_images"],
                images,
                resolved,
                chunk.key,
                settled=partial(_holds, client, batch_id, chunk.files),
            )
            chunk.acknowledged = True
            journal.save()
            sent += len(images)
            events.progress(len(images))
        closed = client.close_batch(body["links"]["close"], str(uuid.uuid4()))
    except (ApiClientError, OSError, KeyboardInterrupt) as error:
        # Ctrl-C too: whoever stops the run learns which batch is left open.
        raise UploadIncomplete(
            str(error) or "interrupted",
            batch_id,
            status_url,
            already + sent,
            len(files),
            journal.path,
        ) from error
    journal.remove()
    return Submission(batch_id, status_url, closed["image_count"], sent, already)


def _journal(
    client: ApiClient,
    files: list[ImageFile],
    resolved: dict[str, dict[str, str]],
    reference: str | None,
    path: Path | None,
    resume: bool,
) -> Journal:
    """This run's journal: the one on disk when resuming (checked against the run), else new."""
    existing = load_journal(path) if path else None
    if existing is not None and not resume:
        raise JournalError(
            f"{path} records an unfinished submission to batch "
            f"{existing.batch_id or '(not yet created)'}: add --resume to finish it, "
            "or delete that file to start a new batch"
        )
    if resume and existing is None:
        raise JournalError(f"nothing to resume: there is no journal at {path}")
    digest = metadata_digest(resolved)
    if existing is None:
        records = {file.name: file_record(file.path) for file in files}
        journal = Journal(path, client.origin, str(uuid.uuid4()), reference, digest, records)
        journal.save()
        return journal
    if existing.api_origin != client.origin:
        raise JournalError(
            f"{path} belongs to the API at {existing.api_origin}, not {client.origin}: "
            "resume with that --api-url"
        )
    if existing.metadata_sha256 != digest:
        raise JournalError(
            f"the metadata for these files differs from the run that {path} records: "
            "resume with the same --metadata file"
        )
    for file in files:
        previous = existing.files.get(file.name)
        record = file_record(file.path, previous)
        if previous is not None and record.sha256 != previous.sha256:
            raise JournalError(
                f"{file.name} changed since batch {existing.batch_id} was started; restore it, "
                f"or delete {path} to submit the folder as a new batch"
            )
        existing.files[file.name] = record
    return existing


def _check_held(journal: Journal, held: dict[str, str]) -> None:
    """A file the batch holds under this name must be this file, not an earlier version."""
    for name, sha256 in held.items():
        record: FileRecord | None = journal.files.get(name)
        if record is not None and record.sha256 != sha256:
            raise JournalError(
                f"batch {journal.batch_id} holds a different {name} from the one in the folder"
            )


def _plan(journal: Journal, pending: list[str], chunk_size: int) -> list[ChunkRecord]:
    """Chunks still to send: a journalled chunk none of whose files the batch holds keeps its
    files and key (its answer may be stored for replay); the other pending files get new ones."""
    waiting = set(pending)
    kept: list[ChunkRecord] = []
    for chunk in journal.chunks:
        if chunk.acknowledged:
            continue
        if chunk.files and all(name in waiting for name in chunk.files):
            kept.append(chunk)
            waiting.difference_update(chunk.files)
        elif not any(name in waiting for name in chunk.files):
            chunk.acknowledged = True  # the batch holds all of it: the answer was lost
        else:
            # Part held, part not: its key named another body, so it is never sent again.
            chunk.files = [name for name in chunk.files if name not in waiting]
            chunk.acknowledged = True
    rest = [name for name in pending if name in waiting]
    new = [
        ChunkRecord(str(uuid.uuid4()), rest[i : i + chunk_size])
        for i in range(0, len(rest), chunk_size)
    ]
    journal.chunks.extend(new)
    return kept + new


def _holds(client: ApiClient, batch_id: str, names: list[str]) -> bool:
    """Whether the batch holds every file of a chunk (one listing, no retries of its own)."""
    held = client.held_images(batch_id, retry=False)
    return all(name in held for name in names)


def _already_closed(journal: Journal, body: dict[str, Any], total: int, already: int) -> Submission:
    """A resumed batch that is closed: done when it holds every file, else a dead end."""
    if already < total:
        raise JournalError(
            f"batch {journal.batch_id} is closed ({body['state']}) with {already} of the "
            f"{total} files; delete {journal.path} to submit the folder as a new batch"
        )
    journal.remove()
    return Submission(
        journal.batch_id or body["id"], journal.status_url or "", body["image_count"], 0, already
    )
