"""Events recorded where a batch settles, against real PostgreSQL: a referable result is
told once however often its batch settles, only to programmes that asked, and the
completion once, after the results."""

from __future__ import annotations

import json
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.access.apikeys import create_programme
from common.db.tables import Batch, BatchState, Image, ImageState, Result, WebhookDelivery, utcnow
from common.lifecycle.progress import settle_batch
from common.webhooks.programmes import configure_webhook

HOOK = "https://hooks.example.org/in"


def _graded_image(session: Session, batch: Batch, *, referable: bool) -> uuid.UUID:
    now = utcnow()
    image = Image(
        batch_id=batch.id,
        programme_id=batch.programme_id,
        sha256=uuid.uuid4().hex * 2,
        storage_path="x",
        size_bytes=1,
        filename="P1/left.jpg",
        patient_id="NHS-123",
        laterality="L",
        state=ImageState.GRADED,
        created_at=now,
        finished_at=now,
    )
    session.add(image)
    session.flush()
    grade = 3 if referable else 0
    session.add(
        Result(
            image_id=image.id,
            batch_id=batch.id,
            gradable=True,
            grade=grade,
            grade_name="severe" if referable else "none",
            probabilities=[0.2] * 5,
            expected_grade=float(grade),
            referable=referable,
            referable_probability=0.9 if referable else 0.1,
            referable_threshold=0.5,
            confidence=0.8,
            model_name="retinaq-small",
            model_version="1",
            model_sha256="a" * 64,
            inference_ms=1.0,
            created_at=now,
        )
    )
    return image.id


def _batch(session: Session, *, on_referable: bool, state: BatchState) -> Batch:
    programme, _ = create_programme(session, f"P-{uuid.uuid4().hex[:8]}")
    configure_webhook(session, programme.id, url=HOOK, on_referable=on_referable)
    now = utcnow()
    batch = Batch(
        programme_id=programme.id,
        reference="r",
        state=state,
        image_count=2,
        created_at=now,
        closed_at=None if state == BatchState.OPEN else now,
    )
    session.add(batch)
    session.flush()
    return batch


def _events(sessions: sessionmaker[Session], batch_id: uuid.UUID) -> list[WebhookDelivery]:
    with sessions() as session:
        return list(
            session.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.batch_id == batch_id)
                .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
            )
        )


def test_a_referable_result_is_told_once_then_the_completion(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        batch = _batch(session, on_referable=True, state=BatchState.OPEN)
        referable = _graded_image(session, batch, referable=True)
        _graded_image(session, batch, referable=False)
        settle_batch(session, batch.id)  # still open: results are told, no completion
    with sessions.begin() as session:
        settle_batch(session, batch.id)  # settling again tells nothing new
    [event] = _events(sessions, batch.id)
    assert (event.event_type, event.image_id, event.url) == ("result.referable", referable, HOOK)
    body = json.loads(event.body)
    assert body["type"] == "result.referable"
    assert body["data"]["image_id"] == str(referable)
    assert body["data"]["grade"] == 3 and body["data"]["laterality"] == "L"
    assert "NHS-123" not in event.body and "left.jpg" not in event.body  # no identifiers

    with sessions.begin() as session:
        row = session.get(Batch, batch.id)
        assert row is not None
        row.state, row.closed_at = BatchState.QUEUED, utcnow()
        session.flush()
        settle_batch(session, batch.id)
    events = _events(sessions, batch.id)
    assert [e.event_type for e in events] == ["result.referable", "batch.completed"]
    completed = json.loads(events[1].body)["data"]
    assert completed["state"] == "completed"
    assert completed["counts"]["graded"] == 2 and completed["counts"]["referable"] == 1


def test_referable_results_are_told_only_to_programmes_that_asked(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        batch = _batch(session, on_referable=False, state=BatchState.QUEUED)
        _graded_image(session, batch, referable=True)
        settle_batch(session, batch.id)
    assert [e.event_type for e in _events(sessions, batch.id)] == ["batch.completed"]
