"""Trigger-kept batch counters always equal a recount, whatever path changed the rows."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable

from flask.testing import FlaskClient
from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from common.db.tables import BatchStat, Image, ImageState, Result
from worker.grading.pipeline import grade_images
from worker.runtime import WorkerRuntime


def _recount(session: Session, batch_id: uuid.UUID) -> dict[str, int]:
    counts = {state.value: 0 for state in ImageState}
    counts.update({f"grade_{g}": 0 for g in range(5)}, referable=0)
    for state, n in session.execute(
        select(Image.state, func.count()).where(Image.batch_id == batch_id).group_by(Image.state)
    ):
        counts[ImageState(state).value] = n
    for grade, n, referable in session.execute(
        select(Result.grade, func.count(), func.sum(case((Result.referable, 1), else_=0)))
        .where(Result.batch_id == batch_id)
        .group_by(Result.grade)
    ):
        counts[f"grade_{grade}"] = n
        counts["referable"] += int(referable or 0)
    return counts


def _stats(session: Session, batch_id: uuid.UUID) -> dict[str, int]:
    return dict(
        session.execute(
            select(BatchStat.stat, BatchStat.value).where(BatchStat.batch_id == batch_id)
        ).all()
    )


def test_counters_follow_uploads_grading_failures_requeues_and_cancellation(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    runtime: WorkerRuntime,
    sessions: sessionmaker[Session],
) -> None:
    files = [(io.BytesIO(fundus_jpeg(grade=i % 5, seed=500 + i)), f"{i}.jpg") for i in range(9)]
    files.insert(0, (io.BytesIO(b"not an image"), "bad.jpg"))  # oldest: claimed first
    batch = client.post("/v1/batches", headers=auth, data={"images": files}).get_json()
    batch_id = uuid.UUID(batch["id"])
    with sessions() as session:
        ids = list(session.scalars(select(Image.id).order_by(Image.id)))
        assert _stats(session, batch_id) == _recount(session, batch_id)

    grade_images(runtime, ids[:7])  # a task for seven takes the seven oldest
    with sessions.begin() as session:  # a reconciler-style requeue of a claimed image
        session.execute(update(Image).where(Image.id == ids[7]).values(state=ImageState.PROCESSING))
        session.execute(update(Image).where(Image.id == ids[7]).values(state=ImageState.QUEUED))
    with sessions() as session:
        stats = _stats(session, batch_id)
        assert stats == _recount(session, batch_id)
    assert stats["graded"] == 6 and stats["failed"] == 1 and stats["queued"] == 3
    assert sum(stats[f"grade_{g}"] for g in range(5)) == 6

    client.delete(batch["links"]["self"], headers=auth)
    with sessions() as session:
        stats = _stats(session, batch_id)
        assert stats == _recount(session, batch_id)
    assert stats["cancelled"] == 3

    status = client.get(batch["links"]["self"], headers=auth).get_json()
    assert status["counts"] == {s.value: stats[s.value] for s in ImageState}
    assert status["referable_count"] == stats["referable"]

    assert client.delete(batch["links"]["self"] + "?purge=true", headers=auth).status_code == 204
    with sessions() as session:
        assert _stats(session, batch_id) == {}
