"""Recording uploaded images against a batch, then enqueueing them after the commit."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlalchemy import insert, update
from sqlalchemy.orm import Session
from werkzeug.datastructures import FileStorage

from api.hooks.request_ids import current_request_id
from api.quotas import enforce_quotas
from api.state import ApiState
from api.uploads import (
    NO_METADATA,
    ImageMetadata,
    display_filename,
    match_metadata,
    with_dicom_header,
)
from common.db.tables import Batch, Image, ImageState, utcnow
from common.ids import uuid7
from common.queue import send_grading
from common.storage.base import HashingSpool
from common.storage.blobs import place_spools, unplace

log = logging.getLogger(__name__)


def record_images(
    session: Session,
    state: ApiState,
    batch: Batch,
    files: list[FileStorage],
    metadata: dict[str, ImageMetadata],
) -> list[uuid.UUID]:
    """Check quotas, move spooled uploads into the store and add their rows; the caller commits.

    Quotas are checked before any file is stored, and again under the programme's lock once
    the rows are ready; the bytes are placed only after that, under their blob locks
    (:mod:`common.storage.blobs`), all of which the caller's commit releases.
    """
    names = [display_filename(f.filename) for f in files]
    matched = match_metadata(metadata, names)
    now = utcnow()
    enforce_quotas(session, state.settings, batch.programme_id, len(files), now)
    spools = _spools(files)
    facts = [
        with_dicom_header(matched.get(name, NO_METADATA), spool)
        for spool, name in zip(spools, names, strict=True)
    ]
    store = state.store
    store.sync(spools)  # the slow part (fsync, or the upload to S3), before any lock
    # Worker log lines about these images name the upload that sent them.
    request_id = current_request_id()
    rows: list[dict[str, Any]] = []
    for spool, name, fact in zip(spools, names, facts, strict=True):
        rows.append(
            {
                "id": uuid7(),
                "batch_id": batch.id,
                "programme_id": batch.programme_id,
                "sha256": spool.sha256,
                "storage_path": store.relative_path(spool.sha256),
                "size_bytes": spool.size,
                "filename": name,
                "patient_id": fact.patient_id,
                "laterality": fact.laterality,
                "study_instance_uid": fact.study_instance_uid,
                "study_date": fact.study_date,
                "device": fact.device,
                "request_id": request_id,
                "state": ImageState.QUEUED,
                "attempts": 0,
                "created_at": now,
                "enqueued_at": now,
            }
        )
    enforce_quotas(session, state.settings, batch.programme_id, len(rows), now, lock=True)
    # Bytes go in place under their blob locks, after every check that could refuse the
    # request, and in the transaction that inserts the rows naming them: a purge of
    # identical bytes either finishes first or waits for this commit.
    placed = place_spools(session, store, spools)
    try:
        session.execute(insert(Image), rows)  # one multi-row INSERT for the whole request
    except BaseException:
        unplace(store, placed)
        raise
    ids = [row["id"] for row in rows]
    # An SQL increment, so concurrent uploads into one open batch never lose a count.
    session.execute(
        update(Batch)
        .where(Batch.id == batch.id)
        .values(image_count=Batch.image_count + len(ids))
        .execution_options(synchronize_session=False)
    )
    return ids


def _spools(files: list[FileStorage]) -> list[HashingSpool]:
    spools: list[HashingSpool] = []
    for upload in files:
        if not isinstance(upload.stream, HashingSpool):
            raise TypeError("uploads must be spooled by StreamingRequest")
        spools.append(upload.stream)
    return spools


def enqueue_grading(state: ApiState, image_ids: list[uuid.UUID]) -> None:
    """Send one grading task per micro-batch of ids, only after the rows are committed.

    A failed publish is logged, not raised: the rows are durable and stay ``queued``, and
    the reconciler re-sends queued images whose ``enqueued_at`` has grown stale. The tasks
    carry this request's id in their headers, for the worker's log lines.
    """
    try:
        tasks = send_grading(
            state.celery, state.settings, image_ids, request_id=current_request_id()
        )
    except Exception:
        log.exception("could not enqueue %d image(s); they stay queued", len(image_ids))
    else:
        log.info(
            "sent %d image(s) for grading in %d task(s)",
            len(image_ids),
            tasks,
            extra={"images": len(image_ids), "tasks": tasks},
        )
