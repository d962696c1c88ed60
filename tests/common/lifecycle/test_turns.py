"""Claims in turn against real PostgreSQL: who is served next, and that claimers never wait."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from common.db.tables import Image, ImageState, ProgrammeTurn
from common.lifecycle.claims import Claim
from common.lifecycle.turns import claim_in_turn, programmes_in_turn


def _claim(sessions: sessionmaker[Session], limit: int) -> list[Claim]:
    with sessions.begin() as session:
        return claim_in_turn(session, limit, max_attempts=5, lease_s=60)


def _queue(
    submit: Callable, fundus_jpeg: Callable[..., bytes], headers: dict[str, str], n: int, seed: int
) -> list[uuid.UUID]:
    _, ids = submit([(fundus_jpeg(seed=seed + i, size=64), f"{i}.jpg") for i in range(n)], headers)
    return ids


def test_a_newly_waiting_programme_is_served_next_and_a_short_claim_is_topped_up(
    submit: Callable,
    fundus_jpeg: Callable[..., bytes],
    make_programme: Callable[[str], dict[str, str]],
    sessions: sessionmaker[Session],
) -> None:
    backlog = _queue(submit, fundus_jpeg, make_programme("Backlog"), 12, 0)
    first = _claim(sessions, 4)
    assert [c.image_id for c in first] == backlog[:4], "oldest first within a programme"

    small = _queue(submit, fundus_jpeg, make_programme("Small"), 3, 100)
    second = _claim(sessions, 4)
    # The newcomer first, whatever the backlog ahead of it; the rest of the micro-batch
    # comes from the next programme in turn, so the model batch stays full.
    assert [c.image_id for c in second] == [*small, backlog[4]]
    assert [c.image_id for c in _claim(sessions, 4)] == backlog[5:9]
    with sessions() as session:
        states = dict(session.execute(select(Image.id, Image.state)).all())
    assert [states[i] for i in backlog[9:]] == [ImageState.QUEUED] * 3


def test_programmes_with_work_take_turns(
    submit: Callable,
    fundus_jpeg: Callable[..., bytes],
    make_programme: Callable[[str], dict[str, str]],
    sessions: sessionmaker[Session],
) -> None:
    queues = {
        name: _queue(submit, fundus_jpeg, make_programme(name), 4, seed)
        for name, seed in (("A", 0), ("B", 10), ("C", 20))
    }
    owner = {image_id: name for name, ids in queues.items() for image_id in ids}
    served = []
    for _ in range(6):
        (claim, *rest) = _claim(sessions, 2)
        assert {owner[c.image_id] for c in rest} == {owner[claim.image_id]}
        served.append(owner[claim.image_id])
    assert served == ["A", "B", "C", "A", "B", "C"]
    with sessions() as session:
        assert programmes_in_turn(session) == [], "every queue is empty"
    assert _claim(sessions, 2) == []


def test_two_claimers_at_once_take_different_images_and_neither_waits(
    submit: Callable,
    fundus_jpeg: Callable[..., bytes],
    make_programme: Callable[[str], dict[str, str]],
    sessions: sessionmaker[Session],
) -> None:
    """The first claimer's transaction stays open, holding its images and its programme's
    turn row; the second, under a lock timeout, takes the next images of the same
    programme. (They are in another batch: a batch's counters are one row, which claims
    of the same batch update in turn.)"""
    busy = make_programme("Busy")
    ids = _queue(submit, fundus_jpeg, busy, 4, 0) + _queue(submit, fundus_jpeg, busy, 4, 10)
    holding = threading.Event()
    release = threading.Event()
    first: list[Claim] = []

    def hold_a_claim_open() -> None:
        with sessions.begin() as session:
            first.extend(claim_in_turn(session, 4, max_attempts=5, lease_s=60))
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold_a_claim_open)
    holder.start()
    try:
        assert holding.wait(30)
        with sessions.begin() as session:
            session.execute(text("SET LOCAL lock_timeout = '2s'"))  # a wait would raise
            second = claim_in_turn(session, 4, max_attempts=5, lease_s=60)
    finally:
        release.set()
        holder.join(30)
    assert [c.image_id for c in first] == ids[:4]
    assert [c.image_id for c in second] == ids[4:]
    with sessions() as session:
        turn = session.get_one(ProgrammeTurn, first[0].programme_id)
        assert turn.served_at is not None, "the first claimer marked the turn"


def test_an_empty_queue_claims_nothing_and_marks_no_turn(sessions: sessionmaker[Session]) -> None:
    assert _claim(sessions, 8) == []
    assert _claim(sessions, 0) == []
    with sessions() as session:
        assert session.scalars(select(ProgrammeTurn)).all() == []
