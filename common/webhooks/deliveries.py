"""A webhook event's delivery: one attempt at a time, a log row per attempt, backoff.

The delivery task (:mod:`worker.webhooks`) claims an event (:func:`claim_delivery`), POSTs
it, and records what happened (:func:`record_attempt`), which says when to try again. The
claim pushes ``next_attempt_at`` past the attempt's timeout, so a duplicate message (a
re-send, a redelivery) finds nothing to do while one attempt runs, and a message that
arrives before its event is due is dropped: the one sent for the due time will come.

Retries wait ``webhook_backoff_s`` × 2^(attempt−1), capped at ``webhook_backoff_max_s``,
each drawn between half and all of that (jitter, so receivers coming back from an outage
are not hit by every sender at once). An event is given up (``failed``) after
``webhook_max_attempts`` attempts or ``webhook_max_age_s`` since it was recorded.

The reconciler (:func:`send_due`) sends a task for each new event and again for any due
event whose task was sent ``webhook_resend_after_s`` ago without an attempt since (the
broker lost it), and gives up events past their age that nothing delivered.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from common.db.tables import (
    ProgrammeWebhook,
    WebhookAttempt,
    WebhookDelivery,
    WebhookState,
    utcnow,
)
from common.settings import Settings

SCAN_LIMIT = 1000
# A message may run a little before its due time (clocks, countdown rounding).
EARLY_TOLERANCE = timedelta(seconds=1)
ERROR_MESSAGE_LENGTH = 500


@dataclass(frozen=True)
class ClaimedDelivery:
    """An event in hand for one attempt: what to send, where, and with which secret."""

    id: str
    attempt: int
    url: str
    body: str
    secret: str | None  # None: the programme's webhook settings are gone; nothing is sent


@dataclass(frozen=True)
class AttemptOutcome:
    """What one POST came to: a status code, or an error code and message (or both for a
    refused status)."""

    started_at: datetime
    duration_ms: float
    status_code: int | None = None
    error_code: str | None = None
    error_message: str | None = None

    @property
    def delivered(self) -> bool:
        """A 2xx answer, and nothing else, delivers an event."""
        return self.error_code is None and self.status_code is not None


@dataclass(frozen=True)
class AttemptVerdict:
    """What follows an attempt: done (delivered or given up), or a retry after a delay."""

    state: WebhookState
    retry_in_s: float | None


def backoff_s(
    attempt: int, settings: Settings, draw: Callable[[float, float], float] = random.uniform
) -> float:
    """The wait after failed attempt number ``attempt`` (1-based): doubling, capped, jittered."""
    ceiling = min(settings.webhook_backoff_max_s, settings.webhook_backoff_s * 2 ** (attempt - 1))
    return draw(ceiling / 2, ceiling)


def claim_delivery(
    session: Session, delivery_id: str, settings: Settings, now: datetime | None = None
) -> ClaimedDelivery | None:
    """Take a pending, due event for one attempt, or None (delivered, given up, not yet due
    or being attempted by another task)."""
    moment = now or utcnow()
    lease = moment + timedelta(seconds=settings.webhook_timeout_s * 2 + 5)
    row = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.state == WebhookState.PENDING,
            WebhookDelivery.next_attempt_at <= moment + EARLY_TOLERANCE,
        )
        .values(attempts=WebhookDelivery.attempts + 1, next_attempt_at=lease)
        .returning(
            WebhookDelivery.attempts,
            WebhookDelivery.url,
            WebhookDelivery.body,
            WebhookDelivery.programme_id,
        )
        .execution_options(synchronize_session=False)
    ).first()
    if row is None:
        return None
    attempt, url, body, programme_id = row
    secret = session.scalar(
        select(ProgrammeWebhook.secret).where(ProgrammeWebhook.programme_id == programme_id)
    )
    return ClaimedDelivery(delivery_id, attempt, url, body, secret)


def record_attempt(
    session: Session,
    claimed: ClaimedDelivery,
    outcome: AttemptOutcome,
    settings: Settings,
    now: datetime | None = None,
) -> AttemptVerdict:
    """Log the attempt and move the event on: delivered, given up, or due again later."""
    moment = now or utcnow()
    message = outcome.error_message
    session.add(
        WebhookAttempt(
            id=uuid.uuid4(),
            delivery_id=claimed.id,
            attempt=claimed.attempt,
            started_at=outcome.started_at,
            duration_ms=round(outcome.duration_ms, 1),
            status_code=outcome.status_code,
            error_code=outcome.error_code,
            error_message=None if message is None else message[:ERROR_MESSAGE_LENGTH],
        )
    )
    created_at = session.scalar(
        select(WebhookDelivery.created_at).where(WebhookDelivery.id == claimed.id)
    )
    if outcome.delivered:
        verdict = AttemptVerdict(WebhookState.DELIVERED, None)
    else:
        wait = backoff_s(claimed.attempt, settings)
        too_old = created_at is not None and (moment + timedelta(seconds=wait)) - _aware(
            created_at
        ) > timedelta(seconds=settings.webhook_max_age_s)
        if claimed.attempt >= settings.webhook_max_attempts or too_old:
            verdict = AttemptVerdict(WebhookState.FAILED, None)
        else:
            verdict = AttemptVerdict(WebhookState.PENDING, wait)
    if verdict.retry_in_s is None:
        values: dict[str, object] = {
            "state": verdict.state,
            "finished_at": moment,
            "next_attempt_at": None,
        }
    else:
        due = moment + timedelta(seconds=verdict.retry_in_s)
        # The retry's task is sent now with a delay: the reconciler counts from when it is due.
        values = {"next_attempt_at": due, "enqueued_at": due}
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == claimed.id, WebhookDelivery.attempts == claimed.attempt)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return verdict


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; every one we write is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=utcnow().tzinfo)


def send_due(session: Session, settings: Settings, now: datetime | None = None) -> list[str]:
    """Give up events past their age, and mark as sent (returning them) the pending events
    due with no task sent, or whose task was sent ``webhook_resend_after_s`` ago and never
    ran; the caller sends their tasks after committing."""
    moment = now or utcnow()
    session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.state == WebhookState.PENDING,
            WebhookDelivery.created_at < moment - timedelta(seconds=settings.webhook_max_age_s),
            WebhookDelivery.next_attempt_at <= moment,
        )
        .values(state=WebhookState.FAILED, finished_at=moment, next_attempt_at=None)
        .execution_options(synchronize_session=False)
    )
    stale = moment - timedelta(seconds=settings.webhook_resend_after_s)
    due = session.scalars(
        select(WebhookDelivery.id)
        .where(
            WebhookDelivery.state == WebhookState.PENDING,
            WebhookDelivery.next_attempt_at <= moment,
            or_(WebhookDelivery.enqueued_at.is_(None), WebhookDelivery.enqueued_at < stale),
        )
        .order_by(WebhookDelivery.next_attempt_at)
        .limit(SCAN_LIMIT)
        .with_for_update(skip_locked=True)
    ).all()
    if due:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(due))
            .values(enqueued_at=moment)
            .execution_options(synchronize_session=False)
        )
    return list(due)


@dataclass(frozen=True)
class LoggedDelivery:
    """One event of a batch's delivery log, with its attempts in order."""

    delivery: WebhookDelivery
    attempts: list[WebhookAttempt]


def delivery_log(
    session: Session, programme_id: uuid.UUID, batch_id: uuid.UUID
) -> list[LoggedDelivery]:
    """A batch's events and their attempts, oldest first; only the owning programme's."""
    deliveries = session.scalars(
        select(WebhookDelivery)
        .where(
            and_(
                WebhookDelivery.batch_id == batch_id,
                WebhookDelivery.programme_id == programme_id,
            )
        )
        .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
    ).all()
    attempts: dict[str, list[WebhookAttempt]] = {d.id: [] for d in deliveries}
    if deliveries:
        for attempt in session.scalars(
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id.in_(list(attempts)))
            .order_by(WebhookAttempt.delivery_id, WebhookAttempt.attempt)
        ):
            attempts[attempt.delivery_id].append(attempt)
    return [LoggedDelivery(d, attempts[d.id]) for d in deliveries]
