"""Retention: cancelling a batch's unfinished work, and purging batches with their image bytes.

Rows are deleted in one transaction per batch. In that same transaction the batch's
blobs are locked and the bytes that no image or heat map (in any batch, of any programme)
still names are removed, before the commit releases the locks (:mod:`common.storage.blobs`): an
upload of identical bytes racing the purge either commits first, and its image keeps the
bytes, or waits, and finds them gone and puts them back. The bytes are only set aside
until the commit, so a deletion that fails to commit leaves every row with its bytes; a
crash after the commit leaves set-aside bytes for the sweeper.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from common.db.tables import (
    FINISHED_BATCH_STATES,
    PENDING_IMAGE_STATES,
    Batch,
    BatchState,
    Image,
    ImageState,
    Result,
    utcnow,
)
from common.storage.base import ObjectStore
from common.storage.blobs import commit_release, release_blobs

log = logging.getLogger(__name__)

# PostgreSQL allows 65,535 bind parameters per statement; stay far below it.
_SHA_CHUNK = 1000


@dataclass(frozen=True)
class CancelOutcome:
    """What cancelling one batch changed."""

    images_cancelled: int
    batch_cancelled: bool


@dataclass(frozen=True)
class PurgeReport:
    """What a purge removed; ``files_kept`` counts bytes another image or heat map still names."""

    batches_cancelled: int = 0
    images_cancelled: int = 0
    batches_deleted: int = 0
    images_deleted: int = 0
    results_deleted: int = 0
    files_removed: int = 0
    files_kept: int = 0

    def __add__(self, other: PurgeReport) -> PurgeReport:
        """Field-wise sum, to total a purge of many batches."""
        return PurgeReport(
            **{
                f.name: getattr(self, f.name) + getattr(other, f.name)
                for f in dataclasses.fields(self)
            }
        )


def cancel_batch(session: Session, batch_id: uuid.UUID) -> CancelOutcome:
    """Cancel the batch's queued and processing images, and the batch unless it had finished.

    Graded, ungradable and failed images keep their outcome. Both updates are guarded by
    state, so a worker finishing an image at the same moment either wins (the image keeps
    its grade) or is fenced out (its claim is no longer ``processing``). The caller commits.
    """
    # Serialises with adding images to, or closing, the same batch.
    session.execute(select(Batch.id).where(Batch.id == batch_id).with_for_update(key_share=True))
    now = utcnow()
    cancelled = session.scalars(
        update(Image)
        .where(Image.batch_id == batch_id, Image.state.in_(PENDING_IMAGE_STATES))
        .values(state=ImageState.CANCELLED, finished_at=now, lease_expires_at=None)
        .returning(Image.id)
        .execution_options(synchronize_session=False)
    ).all()
    batch = session.scalar(
        update(Batch)
        .where(Batch.id == batch_id, Batch.state.not_in(FINISHED_BATCH_STATES))
        .values(
            state=BatchState.CANCELLED,
            closed_at=func.coalesce(Batch.closed_at, now),
            completed_at=now,
        )
        .returning(Batch.id)
        .execution_options(synchronize_session=False)
    )
    return CancelOutcome(images_cancelled=len(cancelled), batch_cancelled=batch is not None)


def purge_batch(session: Session, store: ObjectStore, batch_id: uuid.UUID) -> PurgeReport:
    """Cancel, then delete the batch's results, images and row and the bytes nothing else
    names; commit.

    This commits the session, unlike most of ``common``, so that the blob locks taken for
    the bytes are held no longer than the deletion. Anything the caller added to the
    session beforehand (an audit event) commits with the deletion.
    """
    outcome = cancel_batch(session, batch_id)
    results = session.execute(
        delete(Result)
        .where(Result.batch_id == batch_id)
        .returning(Result.id, Result.heatmap_sha256)
        .execution_options(synchronize_session=False)
    ).all()
    images = session.execute(
        delete(Image)
        .where(Image.batch_id == batch_id)
        .returning(Image.sha256, Image.storage_path)
        .execution_options(synchronize_session=False)
    ).all()
    batches = session.scalars(
        delete(Batch)
        .where(Batch.id == batch_id)
        .returning(Batch.id)
        .execution_options(synchronize_session=False)
    ).all()
    image_shas = {sha for sha, _ in images}
    heatmap_shas = {sha for _, sha in results if sha is not None}
    released = release_blobs(session, store, image_shas | heatmap_shas)
    commit_release(session, store, released)
    return PurgeReport(
        batches_cancelled=int(outcome.batch_cancelled),
        images_cancelled=outcome.images_cancelled,
        batches_deleted=len(batches),
        images_deleted=len(images),
        results_deleted=len(results),
        files_removed=released.removed,
        files_kept=released.kept,
    )


def purge_older_than(session: Session, store: ObjectStore, cutoff: datetime) -> PurgeReport:
    """Purge every batch created before ``cutoff``, one transaction per batch.

    Finished and cancelled batches are deleted as they are; unfinished ones are cancelled
    first, so a worker still holding one of their images is fenced out. Commits.
    """
    batch_ids = session.scalars(
        select(Batch.id).where(Batch.created_at < cutoff).order_by(Batch.id)
    ).all()
    session.commit()
    report = PurgeReport()
    for batch_id in batch_ids:
        report += purge_batch(session, store, batch_id)
    return report
