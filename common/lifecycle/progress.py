"""Moving a batch's state forward from its images' states, with guarded single statements.

Both the API (on close) and the worker (after writing results) call this; each update is
one ``UPDATE ... WHERE state IN (...)`` so concurrent callers cannot move a batch backwards.
The caller that completes a batch records its webhook events in the same transaction
(:mod:`common.webhooks.events`); nothing here speaks HTTP or to the broker.
"""

from __future__ import annotations

import uuid

from sqlalchemy import Exists, and_, case, exists, not_, or_, select, update
from sqlalchemy.orm import Session

from common.db.tables import (
    PENDING_IMAGE_STATES,
    TERMINAL_IMAGE_STATES,
    Batch,
    BatchState,
    Image,
    ImageState,
    utcnow,
)
from common.webhooks.events import record_batch_completed, record_referable_results

_UNFINISHED = (BatchState.QUEUED, BatchState.PROCESSING)


def _images_of(batch_id: uuid.UUID, *states: ImageState) -> Exists:
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


def record_batch_model(
    session: Session, batch_ids: set[uuid.UUID], name: str, version: str, sha256: str
) -> None:
    """Record the model grading these batches: the first worker to grade one names it, and
    a worker serving another model (file, name or version) marks the batch ``models_mixed``."""
    if batch_ids:
        session.execute(
            update(Batch)
            .where(Batch.id.in_(batch_ids), Batch.model_sha256.is_(None))
            .values(model_name=name, model_version=version, model_sha256=sha256)
            .execution_options(synchronize_session=False)
        )
        session.execute(
            update(Batch)
            .where(
                Batch.id.in_(batch_ids),
                Batch.models_mixed.is_(False),
                or_(
                    Batch.model_sha256 != sha256,
                    Batch.model_name != name,
                    Batch.model_version != version,
                ),
            )
            .values(models_mixed=True)
            .execution_options(synchronize_session=False)
        )


def settle_batch(session: Session, batch_id: uuid.UUID) -> None:
    """Complete a closed batch once none of its images is pending; else note progress.

    Webhook events are recorded here, committed with what they report: the completion by
    the one caller whose update completed the batch, referable results by any caller."""
    nothing_pending = not_(_images_of(batch_id, *PENDING_IMAGE_STATES))
    completed = session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.state.in_(_UNFINISHED), nothing_pending)
        .values(
            state=case(
                (_images_of(batch_id, ImageState.FAILED), BatchState.COMPLETED_WITH_ERRORS),
                else_=BatchState.COMPLETED,
            ),
            completed_at=utcnow(),
        )
        .returning(Batch.id)
        .execution_options(synchronize_session=False)
    ).first()
    record_referable_results(session, batch_id)
    if completed is not None:
        record_batch_completed(session, batch_id)
    started = _images_of(batch_id, ImageState.PROCESSING, *TERMINAL_IMAGE_STATES)
    session.execute(
        update(Batch)
        .where(and_(Batch.id == batch_id, Batch.state == BatchState.QUEUED, started))
        .values(state=BatchState.PROCESSING)
        .execution_options(synchronize_session=False)
    )


def settle_finished_batches(session: Session) -> int:
    """Settle every unfinished closed batch that has nothing pending; returns how many.

    A worker settles after its commit, but a worker killed between the two, or two workers
    each not yet seeing the other's commit, can leave a finished batch unsettled: the
    reconciler's sweep catches it.
    """
    candidates = session.scalars(
        select(Batch.id).where(
            Batch.state.in_(_UNFINISHED),
            Batch.closed_at.is_not(None),
            not_(exists().where(Image.batch_id == Batch.id, Image.state.in_(PENDING_IMAGE_STATES))),
        )
    ).all()
    for batch_id in candidates:
        settle_batch(session, batch_id)
    return len(candidates)
