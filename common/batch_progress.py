"""Moving a batch's state forward from its images' states, with guarded single statements.

Both the API (on close) and the worker (after writing results) call this; each update is
one ``UPDATE ... WHERE state IN (...)`` so concurrent callers cannot move a batch backwards.
"""

from __future__ import annotations

import uuid

from sqlalchemy import and_, case, exists, not_, update
from sqlalchemy.orm import Session

from common.models import (
    PENDING_IMAGE_STATES,
    TERMINAL_IMAGE_STATES,
    Batch,
    BatchState,
    Image,
    ImageState,
    utcnow,
)

_UNFINISHED = (BatchState.QUEUED, BatchState.PROCESSING)


def _images_of(batch_id: uuid.UUID, *states: ImageState) -> exists:
    return exists().where(Image.batch_id == batch_id, Image.state.in_(states))


def mark_batches_processing(session: Session, batch_ids: set[uuid.UUID]) -> None:
    """Work has started on these batches (no-op for open or finished ones)."""
    if batch_ids:
        session.execute(
            update(Batch)
            .where(Batch.id.in_(batch_ids), Batch.state == BatchState.QUEUED)
            .values(state=BatchState.PROCESSING)
            .execution_options(synchronize_session=False)
        )


def settle_batch(session: Session, batch_id: uuid.UUID) -> None:
    """Complete a closed batch once none of its images is pending; else note progress."""
    nothing_pending = not_(_images_of(batch_id, *PENDING_IMAGE_STATES))
    session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.state.in_(_UNFINISHED), nothing_pending)
        .values(
            state=case(
                (_images_of(batch_id, ImageState.FAILED), BatchState.COMPLETED_WITH_ERRORS),
                else_=BatchState.COMPLETED,
            ),
            completed_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    started = _images_of(batch_id, ImageState.PROCESSING, *TERMINAL_IMAGE_STATES)
    session.execute(
        update(Batch)
        .where(and_(Batch.id == batch_id, Batch.state == BatchState.QUEUED, started))
        .values(state=BatchState.PROCESSING)
        .execution_options(synchronize_session=False)
    )
