"""The webhooks worker's Celery app and its one task, :data:`~common.queue.DELIVER_WEBHOOK_TASK`.

Start it with ``retinaq worker --serve webhooks`` (``celery -A worker.webhooks.app worker
--pool=threads`` on the webhooks queue). The task is thin: :func:`worker.webhooks.delivery.
deliver` claims the event, POSTs it, logs the attempt and sends itself again with the
backoff's delay while attempts remain (:mod:`common.webhooks.deliveries`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery.signals import setup_logging

from common.db.engine import engine_from_settings, make_sessionmaker
from common.logs import configure_logging
from common.queue import DELIVER_WEBHOOK_TASK, make_celery
from common.settings import get_settings
from worker.webhooks.delivery import DeliveryRuntime, deliver
from worker.webhooks.sending import allowed_networks

app = make_celery(get_settings(), name="retinaq-webhooks")


@setup_logging.connect
def _setup_logging(loglevel: int | str | None = None, **_: Any) -> None:
    """Our log format for every line, Celery's own included."""
    settings = get_settings()
    configure_logging(settings.log_format, loglevel or settings.log_level)


@lru_cache(maxsize=1)
def delivery_runtime() -> DeliveryRuntime:
    """The process's runtime, on its first task: one engine, the allowed networks."""
    settings = get_settings()
    sessions = make_sessionmaker(engine_from_settings(settings))
    return DeliveryRuntime(settings, sessions, allowed_networks(settings), app)


@app.task(name=DELIVER_WEBHOOK_TASK, ignore_result=True)
def deliver_webhook_task(delivery_id: str) -> str:
    """Deliver one webhook event by id; a duplicate or early message does nothing."""
    return deliver(delivery_runtime(), delivery_id)
