"""Lease renewal against real PostgreSQL: only this attempt's processing rows are renewed."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from common.db.tables import Image, ImageState, utcnow
from common.lifecycle.claims import claim_images, renew_leases


def test_renewal_extends_only_the_leases_this_attempt_still_holds(
    submit: Callable, fundus_jpeg: Callable[..., bytes], sessions: sessionmaker[Session]
) -> None:
    _, ids = submit([(fundus_jpeg(seed=i), f"{i}.jpg") for i in range(4)])
    ours, superseded, handed_back, finished = ids
    with sessions.begin() as session:
        claims = claim_images(session, ids, max_attempts=5, lease_s=60)
    assert [c.attempt for c in claims] == [1, 1, 1, 1]
    almost_over = utcnow() + timedelta(seconds=1)
    with sessions.begin() as session:
        session.execute(update(Image).values(lease_expires_at=almost_over))
        # A later attempt took this one over, the reconciler handed that one back to the
        # queue, and the last one is already finished.
        session.execute(update(Image).where(Image.id == superseded).values(attempts=2))
        session.execute(
            update(Image)
            .where(Image.id == handed_back)
            .values(state=ImageState.QUEUED, lease_expires_at=None)
        )
        session.execute(
            update(Image)
            .where(Image.id == finished)
            .values(state=ImageState.FAILED, lease_expires_at=None)
        )

    before = utcnow()
    with sessions.begin() as session:
        assert renew_leases(session, claims, lease_s=300) == {ours}
    with sessions() as session:
        leases = dict(session.execute(select(Image.id, Image.lease_expires_at)).all())
        attempts = dict(session.execute(select(Image.id, Image.attempts)).all())
    renewed = leases[ours]
    assert renewed is not None
    assert before + timedelta(seconds=299) <= renewed <= utcnow() + timedelta(seconds=300)
    assert leases[superseded] == almost_over, "another attempt's lease is not ours to extend"
    assert leases[handed_back] is None and leases[finished] is None
    assert attempts == {ours: 1, superseded: 2, handed_back: 1, finished: 1}, "no claim bumped"


def test_renewing_no_claims_touches_nothing(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        assert renew_leases(session, [], lease_s=60) == set()
