"""Recovery without the broker: the database says what still needs grading.

Each pass re-sends grading tasks for images that are ``queued`` but whose last send is
older than ``requeue_after_s`` (a publish that failed after the API's commit) and for images
whose ``processing`` lease has expired: a live worker renews its leases while it works
(:mod:`worker.grading.lease_keeper`), so only a dead one's run out (a worker killed with
``kill -9``), and a pass every ``reconcile_interval_s`` hands them back soon after.

A broker that lost its data (Redis restarted without persistence, flushed, or failed over
to an empty replica) is noticed at once rather than after ``requeue_after_s``: each pass
first looks for the marker the reconciler keeps in the broker
(:mod:`common.lifecycle.broker_marker`). When it is missing, the pass creates it, logs a
WARNING, and re-sends *every* queued image, whatever its ``enqueued_at``: the next pass
after a wipe, so within about one ``reconcile_interval_s``. More than ``SCAN_LIMIT`` queued
images go over consecutive passes, in id order; how far the re-send has got is kept in the
marker itself, so it survives a reconciler restart and starts over after a second wipe.
Enough tasks are sent for every queued image, so recovery does not depend on which images a
task ends up grading.

It also asks again, for a day, for heat maps that were asked for but never came (a
heat-map task the broker lost, wiped or not, after ``requeue_after_s``: a heat map holds
no batch back), and drops expired idempotency keys. Once per ``sweep_grace_s`` it also
sweeps the store for bytes that nothing names (:mod:`common.storage.blobs`). It sends a
delivery task for each new webhook event, and again for one whose task the broker lost
(:func:`common.webhooks.deliveries.send_due`): events are recorded where a batch settles,
in its transaction, which cannot send. Duplicate
sends are harmless: a claim only takes pending images, the attempt number fences out a
superseded claim, and a heat map is made once. Images out of attempts become ``failed``.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta

from celery import Celery
from sqlalchemy import ColumnElement, and_, delete, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from common.db.tables import (
    PENDING_IMAGE_STATES,
    IdempotencyKey,
    Image,
    ImageState,
    Result,
    utcnow,
)
from common.lifecycle.broker_marker import BrokerMarker, broker_marker
from common.lifecycle.claims import fail_exhausted
from common.lifecycle.progress import settle_finished_batches
from common.queue import send_grading, send_heatmap_task, send_webhook_delivery
from common.settings import Settings
from common.storage.base import ObjectStore
from common.storage.blobs import SweepReport, sweep_orphans
from common.webhooks.deliveries import send_due

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
    webhooks_sent: int = 0
    # Whether this pass re-sent every queued image (from where the last one stopped) because
    # the broker had lost its queue.
    after_broker_loss: bool = False


@dataclass(frozen=True)
class BrokerResend:
    """The marker's value: its random epoch, and how far the re-send of every queued image
    that its creation started has got."""

    epoch: str
    after: str | None = None  # the last image id a pass covered (ids are time ordered)
    done: bool = False

    def dumps(self) -> str:
        """The marker's text."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def loads(cls, raw: str) -> BrokerResend:
        """Parse a marker; one this code cannot read counts as finished, never as a wipe."""
        try:
            value = json.loads(raw)
            return cls(str(value["epoch"]), value["after"], bool(value["done"]))
        except (ValueError, TypeError, KeyError):
            return cls(epoch=raw, done=True)


def resend_due(marker: BrokerMarker | None) -> BrokerResend | None:
    """The unfinished re-send this pass must continue, or None; a missing marker (the broker
    lost its data, or is new) is put back and starts one."""
    if marker is None:
        return None
    fresh = BrokerResend(epoch=secrets.token_hex(8))
    if marker.create(fresh.dumps()):
        log.warning(
            "reconciler: the broker lost its queue (restarted empty, flushed or failed over) "
            "or is new: its marker was missing; re-sending every queued image (epoch %s)",
            fresh.epoch,
        )
        return fresh
    raw = marker.read()
    if raw is None:  # wiped since the line above: the next pass starts the re-send
        return None
    state = BrokerResend.loads(raw)
    return None if state.done else state


def reconcile_once(
    sessions: sessionmaker[Session], celery: Celery, settings: Settings
) -> ReconcileReport:
    """One pass: fail exhausted images, re-send stale queued work and expired leases, and
    every queued image after the broker lost its queue."""
    with broker_marker(celery, settings) as marker:
        resend = resend_due(marker)
    now = utcnow()
    stale_send = now - timedelta(seconds=settings.requeue_after_s)
    stuck = or_(
        and_(
            Image.state == ImageState.QUEUED,
            or_(Image.enqueued_at.is_(None), Image.enqueued_at < stale_send),
        ),
        and_(Image.state == ImageState.PROCESSING, Image.lease_expires_at < now),
    )
    if resend is not None:
        stuck = or_(stuck, _not_yet_resent(resend))
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
    if resend is not None:
        _record_progress(celery, settings, resend, ids)
    heatmaps = _ask_again_for_heatmaps(sessions, settings, now)
    if heatmaps and settings.heatmaps:
        send_heatmap_task(celery, settings, heatmaps)
    with sessions.begin() as session:
        webhooks = send_due(session, settings)
    for delivery_id in webhooks:
        send_webhook_delivery(celery, settings, delivery_id)
    report = ReconcileReport(
        requeued=len(ids),
        lease_expired=expired,
        exhausted=exhausted_count,
        heatmaps_requested=len(heatmaps),
        webhooks_sent=len(webhooks),
        after_broker_loss=resend is not None,
    )
    if ids or exhausted_count or heatmaps or webhooks:
        log.info("reconciler: %s", report)
    return report


def _not_yet_resent(resend: BrokerResend) -> ColumnElement[bool]:
    """Queued images the re-send has not covered yet, however recently they were sent."""
    queued = Image.state == ImageState.QUEUED
    return queued if resend.after is None else and_(queued, Image.id > uuid.UUID(resend.after))


def _record_progress(
    celery: Celery, settings: Settings, resend: BrokerResend, ids: list[uuid.UUID]
) -> None:
    """Note in the marker how far the re-send got, once this pass's tasks are sent.

    A pass takes rows in id order up to ``SCAN_LIMIT``, the stale and the expired among
    them, so a full pass has covered every queued image up to its last id, and a pass short
    of the limit has covered them all. A marker wiped meanwhile is left missing: the next
    pass starts the re-send over."""
    done = len(ids) < SCAN_LIMIT
    progress = replace(resend, after=None if done else str(ids[-1]), done=done)
    with broker_marker(celery, settings) as marker:
        if marker is not None:
            marker.replace(progress.dumps())
    if done:
        log.info(
            "reconciler: every queued image re-sent after the broker's loss (epoch %s)",
            resend.epoch,
        )


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
