"""Recording webhook events where a batch settles, in the caller's transaction.

Nothing here speaks HTTP or to the broker: an event is a ``webhook_deliveries`` row,
committed with the state change it reports, so it is never sent for a change that rolled
back nor lost for one that committed. The reconciler sends a task for each new row
(:func:`common.webhooks.deliveries.send_due`).

Events: ``batch.completed`` when a batch settles as completed or completed_with_errors, to
the batch's ``callback_url`` or else the programme's default; and, for programmes that
asked (``--on-referable``), ``result.referable`` for each referable result. A programme
without a signing secret gets none: an event it could not verify is worth nothing.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Insert, exists, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from common.db.tables import (
    Batch,
    BatchStat,
    BatchState,
    Image,
    ProgrammeWebhook,
    Result,
    WebhookDelivery,
    WebhookState,
    utcnow,
)
from common.ids import uuid7

BATCH_COMPLETED = "batch.completed"
RESULT_REFERABLE = "result.referable"
EVENT_TYPES = (BATCH_COMPLETED, RESULT_REFERABLE)

# Referable results are looked for among those this recent at each settle: a result is
# settled seconds after it is written, and the bound keeps a settle of a large batch from
# re-reading every result it ever had.
REFERABLE_LOOKBACK = timedelta(hours=1)

_COUNTED = ("graded", "ungradable", "failed", "cancelled", "referable")


def new_message_id() -> str:
    """A ``webhook-id``: unique per event, repeated by each of its retries."""
    return f"msg_{uuid7().hex}"


def event_body(event_type: str, data: dict[str, Any], now: datetime) -> str:
    """The JSON sent, in the Standard Webhooks shape: type, timestamp, data."""
    envelope = {"type": event_type, "timestamp": _iso(now), "data": data}
    return json.dumps(envelope, separators=(",", ":"), sort_keys=True)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class _BatchFacts:
    """What an event says of its batch and where it goes, read as columns: an ORM object
    the caller holds may predate the guarded update that just moved the batch."""

    id: uuid.UUID
    programme_id: uuid.UUID
    reference: str | None
    state: str
    image_count: int
    completed_at: datetime | None
    url: str | None
    on_referable: bool


def _batch_facts(session: Session, batch_id: uuid.UUID) -> _BatchFacts | None:
    """The batch and where its events go; None when its programme has no signing secret."""
    row = session.execute(
        select(
            Batch.id,
            Batch.programme_id,
            Batch.reference,
            Batch.state,
            Batch.image_count,
            Batch.completed_at,
            func.coalesce(Batch.callback_url, ProgrammeWebhook.url),
            ProgrammeWebhook.on_referable,
        )
        .join(ProgrammeWebhook, ProgrammeWebhook.programme_id == Batch.programme_id)
        .where(Batch.id == batch_id)
    ).first()
    if row is None:
        return None
    return _BatchFacts(
        id=row[0],
        programme_id=row[1],
        reference=row[2],
        state=BatchState(row[3]).value,
        image_count=row[4],
        completed_at=row[5],
        url=row[6],
        on_referable=row[7],
    )


def record_batch_completed(session: Session, batch_id: uuid.UUID) -> str | None:
    """Record the completion event of a batch that has just completed; its id, or None when
    nobody is to be told."""
    batch = _batch_facts(session, batch_id)
    if batch is None or batch.url is None:
        return None
    stats = dict(
        session.execute(
            select(BatchStat.stat, BatchStat.value).where(BatchStat.batch_id == batch_id)
        ).all()
    )
    now = utcnow()
    data = {
        "batch_id": str(batch.id),
        "reference": batch.reference,
        "state": batch.state,
        "image_count": batch.image_count,
        "completed_at": _iso(batch.completed_at or now),
        "counts": {name: int(stats.get(name, 0)) for name in _COUNTED},
    }
    message_id = new_message_id()
    session.add(
        WebhookDelivery(
            id=message_id,
            programme_id=batch.programme_id,
            batch_id=batch.id,
            event_type=BATCH_COMPLETED,
            url=batch.url,
            body=event_body(BATCH_COMPLETED, data, now),
            state=WebhookState.PENDING,
            attempts=0,
            created_at=now,
            next_attempt_at=now,
        )
    )
    session.flush()
    return message_id


def record_referable_results(session: Session, batch_id: uuid.UUID) -> int:
    """Record a ``result.referable`` event for each recent referable result of the batch
    that has none yet, when its programme asked for them; returns how many."""
    batch = _batch_facts(session, batch_id)
    if batch is None or batch.url is None or not batch.on_referable:
        return 0
    now = utcnow()
    already = exists().where(
        WebhookDelivery.image_id == Result.image_id,
        WebhookDelivery.event_type == RESULT_REFERABLE,
    )
    rows = session.execute(
        select(Result, Image.laterality)
        .join(Image, Image.id == Result.image_id)
        .where(
            Result.batch_id == batch_id,
            Result.referable.is_(True),
            Result.created_at > now - REFERABLE_LOOKBACK,
            ~already,
        )
        .order_by(Result.id)
    ).all()
    if not rows:
        return 0
    values = [
        {
            "id": new_message_id(),
            "programme_id": batch.programme_id,
            "batch_id": batch.id,
            "image_id": result.image_id,
            "event_type": RESULT_REFERABLE,
            "url": batch.url,
            "body": event_body(RESULT_REFERABLE, _result_data(batch, result, laterality), now),
            "state": WebhookState.PENDING,
            "attempts": 0,
            "created_at": now,
            "next_attempt_at": now,
        }
        for result, laterality in rows
    ]
    session.execute(_insert_ignoring_duplicates(session), values)
    return len(values)


def _result_data(batch: _BatchFacts, result: Result, laterality: str | None) -> dict[str, Any]:
    """What a referable event says: ids and the grade, no patient identifier (the receiver
    reads that through the API with its key, so a webhook log never holds one)."""
    return {
        "batch_id": str(batch.id),
        "reference": batch.reference,
        "image_id": str(result.image_id),
        "laterality": laterality,
        "grade": result.grade,
        "grade_name": result.grade_name,
        "referable": True,
        "referable_probability": result.referable_probability,
        "model": {"name": result.model_name, "version": result.model_version},
        "graded_at": _iso(result.created_at),
    }


def _insert_ignoring_duplicates(session: Session) -> Insert:
    """An insert that skips an event already recorded by a concurrent settle."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(WebhookDelivery).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(WebhookDelivery).on_conflict_do_nothing()
    return insert(WebhookDelivery)
