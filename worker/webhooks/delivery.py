"""One delivery of one webhook event: claim it, POST it, log the attempt, schedule a retry.

Kept apart from the Celery app (:mod:`worker.webhooks.app`), so tests and tools drive a
delivery without building one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from common.queue import send_webhook_delivery
from common.settings import Settings
from common.webhooks.addresses import IPNetwork
from common.webhooks.deliveries import claim_delivery, record_attempt
from worker.webhooks.sending import post_event

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliveryRuntime:
    """What a delivery needs, built once per process: ``celery`` sends the retries."""

    settings: Settings
    sessions: sessionmaker[Session]
    allowed: tuple[IPNetwork, ...]
    celery: Celery


def deliver(runtime: DeliveryRuntime, delivery_id: str) -> str:
    """One attempt of one event, if it is due and not in flight; what became of it."""
    with runtime.sessions.begin() as session:
        claimed = claim_delivery(session, delivery_id, runtime.settings)
    if claimed is None:
        return "skipped"
    outcome = post_event(claimed, runtime.settings, runtime.allowed)
    with runtime.sessions.begin() as session:
        verdict = record_attempt(session, claimed, outcome, runtime.settings)
    if verdict.retry_in_s is not None:
        send_webhook_delivery(
            runtime.celery, runtime.settings, delivery_id, countdown=verdict.retry_in_s
        )
    log.info(
        "webhook %s attempt %d: %s",
        delivery_id,
        claimed.attempt,
        outcome.status_code if outcome.error_code is None else outcome.error_code,
        extra={
            "delivery_id": delivery_id,
            "attempt": claimed.attempt,
            "status_code": outcome.status_code,
            "error_code": outcome.error_code,
            "duration_ms": round(outcome.duration_ms, 1),
            "webhook_state": verdict.state.value,
        },
    )
    return verdict.state.value
