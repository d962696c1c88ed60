"""Sending one batch's work back on demand: ``retinaq admin requeue BATCH [--failed]``.

The reconciler's rules, applied to one batch now rather than after ``requeue_after_s``:
queued images are sent again, ``processing`` images whose lease has run out go back to
``queued`` and are sent again (their old claimant is fenced out by its attempt number),
and images out of attempts become ``failed`` (:func:`common.lifecycle.claims.fail_exhausted`).
An image under a live lease is being graded and is left alone. With ``failed`` the batch's
failed images also get a fresh start (``queued``, no attempts, no error), recorded in the
audit log; a batch that had finished because of them is put back to ``queued`` and then
settled (:func:`common.lifecycle.progress.settle_batch`) like any other, the one move
backwards a batch makes, and only by an administrator's hand.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from celery import Celery
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from common.access.audit import record_event
from common.db.tables import Batch, BatchState, Image, ImageState, utcnow
from common.lifecycle.claims import fail_exhausted
from common.lifecycle.progress import settle_batch
from common.queue import send_grading
from common.settings import Settings

AUDIT_ACTION = "batch.requeue"


class BatchNotFound(LookupError):
    """No such batch: never created, or purged."""


class BatchCancelled(ValueError):
    """A cancelled batch's images stay cancelled."""


class TasksNotSent(RuntimeError):
    """The database was changed and committed, but the broker did not take the tasks; the
    reconciler sends the queued images after ``requeue_after_s``."""

    def __init__(self, report: RequeueReport, cause: Exception) -> None:
        super().__init__(f"the broker did not take the tasks: {cause}")
        self.report = report


@dataclass(frozen=True)
class RequeueReport:
    """What requeueing one batch did, and the batch's state afterwards."""

    batch_id: uuid.UUID
    queued_resent: int
    leases_handed_back: int
    failed_restarted: int
    exhausted: int
    still_processing: int
    batch_state: BatchState

    @property
    def sent(self) -> int:
        """Images a grading task was sent for."""
        return self.queued_resent + self.leases_handed_back + self.failed_restarted


def requeue_batch(
    sessions: sessionmaker[Session],
    celery: Celery,
    settings: Settings,
    batch_id: uuid.UUID,
    *,
    failed: bool = False,
) -> RequeueReport:
    """Hand this batch's pending (and with ``failed``, failed) images back to work now.

    Everything is decided in one transaction and the tasks are sent after its commit, as
    the API and the reconciler do; a send that fails leaves the images ``queued`` for the
    reconciler to send again.
    """
    now = utcnow()
    with sessions.begin() as session:
        state = session.scalar(
            select(Batch.state).where(Batch.id == batch_id).with_for_update(key_share=True)
        )
        if state is None:
            raise BatchNotFound(f"no batch {batch_id} (never created, or purged)")
        if state == BatchState.CANCELLED:
            raise BatchCancelled(f"batch {batch_id} is cancelled; its images stay cancelled")
        of_batch = Image.batch_id == batch_id
        expired = and_(
            Image.state == ImageState.PROCESSING,
            or_(Image.lease_expires_at.is_(None), Image.lease_expires_at < now),
        )
        stuck = and_(of_batch, or_(Image.state == ImageState.QUEUED, expired))
        exhausted = len(fail_exhausted(session, stuck, settings.max_attempts, now))
        rows = session.execute(
            select(Image.id, Image.state)
            .where(stuck)
            .order_by(Image.id)
            .with_for_update(skip_locked=True)
        ).all()
        ids = [image_id for image_id, _ in rows]
        handed_back = sum(1 for _, image_state in rows if image_state == ImageState.PROCESSING)
        if ids:
            session.execute(
                update(Image)
                .where(Image.id.in_(ids))
                .values(state=ImageState.QUEUED, enqueued_at=now, lease_expires_at=None)
                .execution_options(synchronize_session=False)
            )
        restarted = _restart_failed(session, batch_id, now) if failed else []
        if restarted:
            _reopen(session, batch_id)
            record_event(
                session,
                programme_id=session.scalar(select(Batch.programme_id).where(Batch.id == batch_id)),
                key_prefix=None,
                action=AUDIT_ACTION,
                object_type="batch",
                object_id=batch_id,
                request_id=None,
                details={"failed_restarted": len(restarted), "requeued": len(ids)},
            )
        settle_batch(session, batch_id)
        live = session.scalar(
            select(func.count())
            .select_from(Image)
            .where(of_batch, Image.state == ImageState.PROCESSING, Image.lease_expires_at >= now)
        )
        final = session.scalar(select(Batch.state).where(Batch.id == batch_id))
    assert final is not None  # the batch row is locked above, so it cannot vanish meanwhile
    report = RequeueReport(
        batch_id=batch_id,
        queued_resent=len(ids) - handed_back,
        leases_handed_back=handed_back,
        failed_restarted=len(restarted),
        exhausted=exhausted,
        still_processing=int(live or 0),
        batch_state=final,
    )
    try:
        send_grading(celery, settings, [*restarted, *ids])
    except Exception as error:  # kombu's and redis's own: whatever the transport raises
        raise TasksNotSent(report, error) from error
    return report


def _restart_failed(session: Session, batch_id: uuid.UUID, now: datetime) -> list[uuid.UUID]:
    """Failed images back to ``queued`` with their attempts and error cleared; their ids."""
    return list(
        session.scalars(
            update(Image)
            .where(Image.batch_id == batch_id, Image.state == ImageState.FAILED)
            .values(
                state=ImageState.QUEUED,
                attempts=0,
                error_code=None,
                error_message=None,
                started_at=None,
                finished_at=None,
                lease_expires_at=None,
                enqueued_at=now,
            )
            .returning(Image.id)
            .execution_options(synchronize_session=False)
        )
    )


def _reopen(session: Session, batch_id: uuid.UUID) -> None:
    """A finished batch with work again is unfinished; ``settle_batch`` then moves it on."""
    session.execute(
        update(Batch)
        .where(
            Batch.id == batch_id,
            Batch.state.in_((BatchState.COMPLETED, BatchState.COMPLETED_WITH_ERRORS)),
        )
        .values(state=BatchState.QUEUED, completed_at=None)
        .execution_options(synchronize_session=False)
    )
