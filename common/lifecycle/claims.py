"""Claims and leases: how a worker takes an image, and what happens when it never finishes.

An image is *claimed* by one guarded UPDATE that moves it to ``processing``, bumps
``attempts`` and sets a lease deadline ``lease_s`` ahead. The attempt number a claim was
made under fences the final write (:mod:`worker.grading.recording`), so if a task is
delivered twice only the latest claim can record a result. The lease is short (under a
minute) because a live worker renews it while it works (:func:`renew_leases`, driven by
:mod:`worker.grading.lease_keeper`), however long its task takes. A lease that runs out (a
worker killed mid-task) makes the image claimable again, by a redelivered task or by the
reconciler's re-send; one whose ``max_attempts`` are spent is failed instead of retried
for ever.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, or_, tuple_, update
from sqlalchemy.orm import Session

from common.db.tables import Image, ImageState, utcnow
from common.lifecycle.progress import settle_batch


@dataclass(frozen=True)
class Claim:
    """An image this task now owns, fenced by its attempt number."""

    image_id: uuid.UUID
    batch_id: uuid.UUID
    programme_id: uuid.UUID
    sha256: str
    storage_path: str
    attempt: int
    # The X-Request-ID of the upload that sent the image, for log lines (None before 0009).
    request_id: str | None = None

    @property
    def content(self) -> tuple[uuid.UUID, str]:
        """Identical bytes of one programme are graded once; across programmes, never shared."""
        return (self.programme_id, self.sha256)


def claim_images(
    session: Session, image_ids: list[uuid.UUID], *, max_attempts: int, lease_s: int
) -> list[Claim]:
    """Move claimable images to ``processing`` with a new attempt; fail the exhausted ones.

    Claimable means ``queued``, or ``processing`` under a lease that has run out: an image
    another worker is still grading is left alone, so a duplicate delivery does not
    re-run it (and a superseded claim is fenced out by its attempt number anyway).
    """
    ids = list(dict.fromkeys(image_ids))
    if not ids:
        return []
    now = utcnow()
    claimable = or_(
        Image.state == ImageState.QUEUED,
        and_(
            Image.state == ImageState.PROCESSING,
            or_(Image.lease_expires_at.is_(None), Image.lease_expires_at < now),
        ),
    )
    fail_exhausted(session, and_(Image.id.in_(ids), claimable), max_attempts, now)
    rows = session.execute(
        update(Image)
        .where(Image.id.in_(ids), claimable)
        .values(
            state=ImageState.PROCESSING,
            attempts=Image.attempts + 1,
            started_at=now,
            lease_expires_at=now + timedelta(seconds=lease_s),
        )
        .returning(
            Image.id,
            Image.batch_id,
            Image.programme_id,
            Image.sha256,
            Image.storage_path,
            Image.attempts,
            Image.request_id,
        )
        .execution_options(synchronize_session=False)
    ).all()
    claims = [Claim(*row) for row in rows]
    order = {image_id: position for position, image_id in enumerate(ids)}
    return sorted(claims, key=lambda c: order[c.image_id])


def renew_leases(session: Session, claims: Iterable[Claim], *, lease_s: int) -> set[uuid.UUID]:
    """Push these claims' leases ``lease_s`` ahead of now; returns the images still ours.

    Only rows still ``processing`` under the claim's own attempt are touched, so a renewal
    never extends a claim that was finished, handed back to the queue or taken over by a
    later attempt; those are simply absent from the answer. The row test is the one the
    final write's fence uses, so both lock the same rows the same way.
    """
    pairs = [(c.image_id, c.attempt) for c in claims]
    if not pairs:
        return set()
    renewed = session.scalars(
        update(Image)
        .where(
            tuple_(Image.id, Image.attempts).in_(pairs),
            Image.state == ImageState.PROCESSING,
        )
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
        .returning(Image.id)
        .execution_options(synchronize_session=False)
    )
    return set(renewed)


def fail_exhausted(
    session: Session, condition: ColumnElement[bool], max_attempts: int, now: datetime
) -> list[uuid.UUID]:
    """Fail the images matching ``condition`` that are out of attempts and settle their
    batches; returns one batch id per failed image. Shared by claims and the reconciler."""
    batch_ids = list(
        session.execute(
            update(Image)
            .where(condition, Image.attempts >= max_attempts)
            .values(
                state=ImageState.FAILED,
                error_code="too_many_attempts",
                error_message=f"grading was attempted {max_attempts} times without finishing",
                finished_at=now,
                lease_expires_at=None,
            )
            .returning(Image.batch_id)
            .execution_options(synchronize_session=False)
        ).scalars()
    )
    for batch_id in set(batch_ids):
        settle_batch(session, batch_id)
    return batch_ids
