"""Leases renewed while a task runs: a slow but alive worker keeps its images."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from common.db.tables import Image, ImageState, Result, utcnow
from common.lifecycle.claims import Claim, claim_images
from worker.grading.lease_keeper import LeaseKeeper
from worker.grading.pipeline import grade_images
from worker.runtime import WorkerRuntime

LEASE_S = 2


def _keepers_alive() -> int:
    return sum(1 for t in threading.enumerate() if t.name == "lease-keeper" and t.is_alive())


def test_a_task_slower_than_its_lease_keeps_its_images_and_writes_its_results(
    runtime: WorkerRuntime,
    submit: Callable,
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
) -> None:
    """One model call of three leases: no other claim can take the images meanwhile."""
    short = dataclasses.replace(
        runtime, settings=runtime.settings.model_copy(update={"lease_s": LEASE_S})
    )
    _, ids = submit([(fundus_jpeg(seed=700 + i), f"{i}.jpg") for i in range(3)])
    rival_claims: list[list[Claim]] = []
    leases_left_s: list[float] = []
    original = runtime.model.predict

    def slow_predict(inputs: np.ndarray) -> np.ndarray:
        deadline = time.monotonic() + 3 * LEASE_S
        while time.monotonic() < deadline:
            time.sleep(0.5)
            with sessions.begin() as session:  # a redelivered task on another worker
                rival_claims.append(claim_images(session, ids, max_attempts=5, lease_s=LEASE_S))
                earliest = session.scalar(select(func.min(Image.lease_expires_at)))
                assert earliest is not None
                leases_left_s.append((earliest - utcnow()).total_seconds())
        return original(inputs)

    runtime.model.predict = slow_predict  # type: ignore[method-assign]
    try:
        report = grade_images(short, ids)
    finally:
        del runtime.model.predict

    assert len(rival_claims) >= 6
    assert all(claims == [] for claims in rival_claims), "a live worker was robbed"
    assert min(leases_left_s) > 0, "a lease ran out while its worker was alive"
    assert (report.claimed, report.graded, report.fenced_out) == (3, 3, 0)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Result)) == 3
        states = set(session.scalars(select(Image.state)))
        assert session.scalar(select(func.max(Image.attempts))) == 1
    assert states == {ImageState.GRADED}
    assert _keepers_alive() == 0, "the renewing thread outlived its task"


def test_without_renewal_the_same_wait_loses_the_claims(
    submit: Callable, fundus_jpeg: Callable[..., bytes], sessions: sessionmaker[Session]
) -> None:
    """The control: a claim left alone for longer than its lease can be taken."""
    _, ids = submit([(fundus_jpeg(seed=710), "a.jpg")])
    with sessions.begin() as session:
        claim_images(session, ids, max_attempts=5, lease_s=1)
    time.sleep(1.2)
    with sessions.begin() as session:
        assert [c.attempt for c in claim_images(session, ids, max_attempts=5, lease_s=1)] == [2]


def test_the_keeper_drops_claims_another_attempt_took_over(
    submit: Callable, fundus_jpeg: Callable[..., bytes], sessions: sessionmaker[Session]
) -> None:
    _, ids = submit([(fundus_jpeg(seed=720 + i), f"{i}.jpg") for i in range(2)])
    with sessions.begin() as session:
        claims = claim_images(session, ids, max_attempts=5, lease_s=1)
    keeper = LeaseKeeper(sessions, claims[:1], lease_s=1)
    time.sleep(1.2)  # the second claim's lease runs out; a rival takes it over
    with sessions.begin() as session:
        assert len(claim_images(session, ids[1:], max_attempts=5, lease_s=60)) == 1
    keeper.hold(claims[1:])
    keeper.renew()
    assert keeper.held == {ids[0]}


def test_a_database_error_while_renewing_is_logged_and_retried_on_the_next_tick(
    submit: Callable,
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, ids = submit([(fundus_jpeg(seed=730), "a.jpg")])
    with sessions.begin() as session:
        claims = claim_images(session, ids, max_attempts=5, lease_s=LEASE_S)
    flaky = _FailingFirst(sessions, failures=2)
    with caplog.at_level(logging.WARNING, "worker.grading.lease_keeper"):
        with LeaseKeeper(flaky, claims, lease_s=LEASE_S):  # type: ignore[arg-type]
            time.sleep(LEASE_S * 2)
            with sessions.begin() as session:
                assert claim_images(session, ids, max_attempts=5, lease_s=60) == []
    assert flaky.calls >= 4, "renewal stopped after the errors"
    failures = [r for r in caplog.records if "could not renew" in r.getMessage()]
    assert len(failures) == 2
    assert not any(r.exc_info for r in failures), "an outage logs one line, not a trace"


class _FailingFirst:
    """A session factory whose first ``failures`` transactions cannot reach the database."""

    def __init__(self, sessions: sessionmaker[Session], failures: int) -> None:
        self.sessions = sessions
        self.failures = failures
        self.calls = 0

    def begin(self) -> AbstractContextManager[Any]:
        self.calls += 1
        if self.calls <= self.failures:
            raise OperationalError("UPDATE images", {}, ConnectionRefusedError("refused"))
        return self.sessions.begin()
