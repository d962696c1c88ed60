"""Retention: cancelling a batch's unfinished work, and purging batches with their image bytes.

Rows are deleted in one transaction per batch. Image files are removed only after that
transaction commits, and only those that no image row (in any batch, of any programme)
still references, checked again after the commit: a rollback never leaves a row pointing
at a missing file, and a crash between commit and removal leaves at worst an unreferenced
file behind.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from common.models import (
    FINISHED_BATCH_STATES,
    PENDING_IMAGE_STATES,
    Batch,
    BatchState,
    Image,
    ImageState,
    Result,
    utcnow,
)
from common.queue import chunked
from common.storage import ImageStore

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
    """What a purge removed; ``files_kept`` counts bytes another image still references."""

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


def purge_batch(session: Session, store: ImageStore, batch_id: uuid.UUID) -> PurgeReport:
    """Cancel, then delete the batch's results, images and row; commit; then remove its files.

    This commits the session, unlike most of ``common``: the files may go only once the
    rows that point at them are gone for good. Anything the caller added to the session
    beforehand (an audit event) commits with the deletion.
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
    session.commit()
    removed, kept = _remove_unreferenced_files(session, store, dict(images))
    heatmaps = {sha: store.relative_path(sha) for _, sha in results if sha is not None}
    removed += _remove_unreferenced_files(session, store, heatmaps)[0]
    return PurgeReport(
        batches_cancelled=int(outcome.batch_cancelled),
        images_cancelled=outcome.images_cancelled,
        batches_deleted=len(batches),
        images_deleted=len(images),
        results_deleted=len(results),
        files_removed=removed,
        files_kept=kept,
    )


def purge_older_than(session: Session, store: ImageStore, cutoff: datetime) -> PurgeReport:
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


def _remove_unreferenced_files(
    session: Session, store: ImageStore, files: dict[str, str]
) -> tuple[int, int]:
    """Remove the files (sha256 → storage path) no image or heat map references any more;
    returns (removed, kept)."""
    still_used: set[str] = set()
    for shas in chunked(sorted(files), _SHA_CHUNK):
        # Uploads and heat maps share one content-addressed store: a file stays while
        # either kind of row still names it.
        for column in (Image.sha256, Result.heatmap_sha256):
            still_used.update(session.scalars(select(column).where(column.in_(shas)).distinct()))
    session.commit()
    removed = 0
    for sha, relative in files.items():
        if sha in still_used:
            continue
        try:
            store.path_for(relative).unlink()
            removed += 1
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as error:
            # The rows are already gone; an unremovable file is a leak to report, not a failure.
            log.warning("could not remove stored file %s: %s", relative, error)
    return removed, len(still_used)
