"""Recovery without the broker: the database says what still needs grading.

Each pass re-sends grading tasks for images that are ``queued`` but whose last send is
older than ``requeue_after_s`` (a wiped Redis, a publish that failed after the API's
commit) and for images whose ``processing`` lease has expired: a live worker renews its
leases while it works (:mod:`worker.grading.lease_keeper`), so only a dead one's run out
(a worker killed with ``kill -9``), and a pass every ``reconcile_interval_s`` hands them
back soon after. It also asks again, for a day, for heat maps that were asked for but
never came (a heat-map task the broker lost), and drops expired idempotency keys. Once per
``sweep_grace_s`` it also sweeps the store for bytes that nothing names
(:mod:`common.storage.blobs`). Duplicate sends are harmless: a claim only takes pending
images, the attempt number fences out a superseded claim, and a heat map is made once.
Images out of attempts become ``failed``.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from common.db.tables import (
    PENDING_IMAGE_STATES,
    IdempotencyKey,
    Image,
    ImageState,
    Result,
    utcnow,
)
from common.lifecycle.claims import fail_exhausted
from common.lifecycle.progress import settle_finished_batches
from common.queue import send_grading, send_heatmap_task
from common.settings import Settings
from common.storage.base import ObjectStore
from common.storage.blobs import SweepReport, sweep_orphans

log = logging.getLogger(__name__)

SCAN_LIMIT = 5000
HEATMAP_RETRY_WINDOW = timedelta(days=1)  # a heat map that failed for a day is given up


@dataclass(frozen=True)
class ReconcileReport:
    """What one pass did."""

    requeued: int
    lease_expired: int
    exhausted: int
    heatmaps_requested: int = 0


def reconcile_once(
    sessions: sessionmaker[Session], celery: Celery, settings: Settings
) -> ReconcileReport:
    """One pass: fail exhausted images, re-send stale queued work and expired leases."""
    now = utcnow()
    stale_send = now - timedelta(seconds=settings.requeue_after_s)
    stuck = or_(
        and_(
            Image.state == ImageState.QUEUED,
            or_(Image.enqueued_at.is_(None), Image.enqueued_at < stale_send),
        ),
        and_(Image.state == ImageState.PROCESSING, Image.lease_expires_at < now),
    )
    with sessions.begin() as session:
        exhausted_count = len(fail_exhausted(session, stuck, settings.max_attempts, now))
    with sessions.begin() as session:
        rows = session.execute(
            select(Image.id, Image.state)
            .where(stuck, Image.state.in_(PENDING_IMAGE_STATES))
            .order_by(Image.id)
            .limit(SCAN_LIMIT)
            .with_for_update(skip_locked=True)
        ).all()
        ids = [image_id for image_id, _ in rows]
        expired = sum(1 for _, state in rows if state == ImageState.PROCESSING)
        if ids:
            # An expired claim goes back to the queue; the old claimant is fenced out by its
            # attempt number if it ever wakes up.
            session.execute(
                update(Image)
                .where(Image.id.in_(ids), Image.state.in_(PENDING_IMAGE_STATES))
                .values(state=ImageState.QUEUED, enqueued_at=now, lease_expires_at=None)
                .execution_options(synchronize_session=False)
            )
    with sessions.begin() as session:
        session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at <= now))
    with sessions.begin() as session:
        settle_finished_batches(session)
    send_grading(celery, settings, ids)
    heatmaps = _ask_again_for_heatmaps(sessions, settings, now)
    if heatmaps and settings.heatmaps:
        send_heatmap_task(celery, settings, heatmaps)
    report = ReconcileReport(
        requeued=len(ids),
        lease_expired=expired,
        exhausted=exhausted_count,
        heatmaps_requested=len(heatmaps),
    )
    if ids or exhausted_count or heatmaps:
        log.info("reconciler: %s", report)
    return report


@dataclass
class OrphanSweeps:
    """The reconciler's sweeps of the store: a whole walk is too costly for every pass, so
    one runs at start and then once per grace period (an orphan goes within two)."""

    store: ObjectStore
    grace_s: float
    last_at: float = -math.inf

    def run_if_due(self, sessions: sessionmaker[Session]) -> SweepReport | None:
        """Sweep when a grace period has passed since the last sweep; None otherwise."""
        now = time.monotonic()
        if now - self.last_at < self.grace_s:
            return None
        self.last_at = now
        return sweep_orphans(sessions, self.store, self.grace_s)


def _ask_again_for_heatmaps(
    sessions: sessionmaker[Session], settings: Settings, now: datetime
) -> list[uuid.UUID]:
    """Images whose heat map was asked for ``requeue_after_s`` ago and never came."""
    if not settings.heatmaps:
        return []
    stale = now - timedelta(seconds=settings.requeue_after_s)
    with sessions.begin() as session:
        rows = session.execute(
            update(Result)
            .where(
                Result.id.in_(
                    select(Result.id)
                    .where(
                        Result.heatmap_sha256.is_(None),
                        Result.heatmap_requested_at < stale,
                        Result.created_at > now - HEATMAP_RETRY_WINDOW,
                    )
                    .order_by(Result.id)
                    .limit(SCAN_LIMIT)
                )
            )
            .values(heatmap_requested_at=now)
            .returning(Result.image_id)
            .execution_options(synchronize_session=False)
        ).all()
    return [image_id for (image_id,) in rows]
