"""The worker's grading pipeline against real PostgreSQL, with the bundled model."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from common.db.tables import Batch, BatchState, Image, ImageState, Result, utcnow
from common.lifecycle.claims import claim_images
from common.modelling.manifest import read_manifest
from common.settings import Settings
from common.storage.base import StoreUnavailable
from worker.grading.pipeline import grade_claimed, grade_images
from worker.runtime import WorkerRuntime


def test_a_bad_image_fails_alone_and_the_rest_are_graded(
    runtime: WorkerRuntime,
    submit: Callable,
    fundus_jpeg: Callable[..., bytes],
    client: FlaskClient,
    auth: dict[str, str],
    bundled_model_path: Path,
) -> None:
    files = [(fundus_jpeg(grade=g, seed=g), f"g{g}.jpg") for g in range(5)]
    files.insert(2, (b"this is not a picture", "notes.jpg"))
    batch, ids = submit(files)

    report = grade_images(runtime, ids)
    assert (report.claimed, report.graded, report.failed) == (6, 5, 1)

    status = client.get(batch["links"]["self"], headers=auth).get_json()
    assert status["state"] == "completed_with_errors"
    assert status["counts"]["graded"] == 5
    assert status["counts"]["failed"] == 1
    assert sum(status["grades"].values()) == 5
    assert status["completed_at"] is not None

    rows = client.get(batch["links"]["results"], headers=auth).get_json()["items"]
    manifest = read_manifest(bundled_model_path)
    bad = next(r for r in rows if r["filename"] == "notes.jpg")
    assert bad["state"] == "failed"
    assert bad["error"]["code"] == "not_an_image"
    for row in rows:
        if row["filename"] == "notes.jpg":
            continue
        assert row["state"] == "graded"
        assert 0 <= row["grade"] <= 4
        assert sum(row["probabilities"]) == pytest.approx(1.0, abs=1e-4)
        assert row["model"] == {
            "name": manifest.name,
            "version": manifest.version,
            "sha256": manifest.sha256,
        }


def test_grading_twice_is_harmless(
    runtime: WorkerRuntime,
    submit: Callable,
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
) -> None:
    _, ids = submit([(fundus_jpeg(seed=i), f"{i}.jpg") for i in range(3)])
    first = grade_images(runtime, ids)
    second = grade_images(runtime, ids)
    assert first.graded == 3
    assert (second.claimed, second.skipped) == (0, 3)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Result)) == 3


def test_a_superseded_claim_cannot_write(
    runtime: WorkerRuntime,
    submit: Callable,
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
) -> None:
    """A redelivered task claims again; the first, slower run is fenced out."""
    _, ids = submit([(fundus_jpeg(seed=i), f"{i}.jpg") for i in range(2)])
    with sessions.begin() as session:
        stale = claim_images(session, ids, max_attempts=5, lease_s=60)
    with sessions.begin() as session:
        assert claim_images(session, ids, max_attempts=5, lease_s=60) == [], "lease still live"
        session.execute(
            update(Image).where(Image.id.in_(ids)).values(lease_expires_at=utcnow())
        )  # the first claimant stalled past its lease
    with sessions.begin() as session:
        fresh = claim_images(session, ids, max_attempts=5, lease_s=60)
    assert [c.attempt for c in stale] == [1, 1]
    assert [c.attempt for c in fresh] == [2, 2]

    assert _predict_and_record(runtime, stale) == (0, 0)
    assert _predict_and_record(runtime, fresh) == (2, 0)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Result)) == 2


def _predict_and_record(runtime: WorkerRuntime, claims: list) -> tuple[int, int]:
    report = grade_claimed(runtime, claims)
    return report.graded, report.failed


def test_missing_file_and_exhausted_attempts_fail_with_reasons(
    runtime: WorkerRuntime,
    submit: Callable,
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    _, ids = submit([(fundus_jpeg(seed=i), f"{i}.jpg") for i in range(2)])
    with sessions.begin() as session:
        gone = session.get_one(Image, ids[0])
        (settings.image_store / gone.storage_path).unlink()
        session.get_one(Image, ids[1]).attempts = 5
    grade_images(runtime, ids)
    with sessions() as session:
        states = {
            i.id: (i.state, i.error_code)
            for i in session.scalars(select(Image).where(Image.id.in_(ids)))
        }
        batch_state = session.scalar(select(Batch.state))
    assert states[ids[0]] == (ImageState.FAILED, "missing_file")
    assert states[ids[1]] == (ImageState.FAILED, "too_many_attempts")
    assert batch_state == BatchState.COMPLETED_WITH_ERRORS


def test_an_unreachable_store_fails_no_image_and_leaves_them_to_be_retried(
    runtime: WorkerRuntime,
    submit: Callable,
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, ids = submit([(fundus_jpeg(seed=i), f"{i}.jpg") for i in range(2)])

    def unreachable(relative: str) -> bytes:
        raise StoreUnavailable("the image store could not be reached")

    monkeypatch.setattr(runtime.store, "read", unreachable)
    with pytest.raises(StoreUnavailable):
        grade_images(runtime, ids)
    with sessions() as session:
        states = {(i.state, i.error_code) for i in session.scalars(select(Image))}
        results = session.scalar(select(func.count()).select_from(Result))
    # Still claimed, under a lease that will lapse: nothing recorded as failed or graded.
    assert states == {(ImageState.PROCESSING, None)}
    assert results == 0


def test_open_batch_completes_only_after_close(
    runtime: WorkerRuntime,
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
) -> None:
    batch = client.post("/v1/batches", headers=auth, json={"open": True}).get_json()
    client.post(
        batch["links"]["add_images"],
        headers=auth,
        data={"images": [(io.BytesIO(fundus_jpeg(seed=1)), "a.jpg")]},
    )
    with sessions() as session:
        ids = list(session.scalars(select(Image.id)))
    grade_images(runtime, ids)
    assert client.get(batch["links"]["self"], headers=auth).get_json()["state"] == "open"
    closed = client.post(batch["links"]["close"], headers=auth).get_json()
    assert closed["state"] == "completed"


def test_unusual_but_valid_formats_are_graded(
    runtime: WorkerRuntime, submit: Callable, fundus_jpeg: Callable[..., bytes]
) -> None:
    from PIL import Image as PILImage

    source = PILImage.open(io.BytesIO(fundus_jpeg(grade=2, seed=9)))
    encoded = []
    for mode, fmt in (("RGBA", "PNG"), ("L", "PNG"), ("P", "PNG"), ("CMYK", "JPEG")):
        buffer = io.BytesIO()
        source.convert(mode).save(buffer, format=fmt)
        encoded.append((buffer.getvalue(), f"{mode}.{fmt.lower()}"))
    _, ids = submit(encoded)
    report = grade_images(runtime, ids)
    # A grey picture decodes, but a colour model cannot grade it: recapture in colour.
    assert (report.graded, report.ungradable, report.failed) == (3, 1, 0)
    with runtime.sessions() as session:
        grey = session.scalars(select(Result).where(Result.image_id == ids[1])).one()
    assert (grey.gradable, grey.ungradable_reasons, grey.grade) == (False, ["not_fundus"], None)


def test_identical_bytes_are_graded_once_and_every_entry_answered(
    runtime: WorkerRuntime,
    submit: Callable,
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
) -> None:
    same = fundus_jpeg(grade=3, seed=11)
    _, ids = submit([(same, "left.jpg"), (fundus_jpeg(seed=12), "other.jpg"), (same, "again.jpg")])
    report = grade_images(runtime, ids)
    assert (report.graded, report.inferred) == (3, 2)

    _, later = submit([(same, "resubmitted.jpg")])
    assert grade_images(runtime, later).inferred == 0
    with sessions() as session:
        rows = session.execute(
            select(Image.filename, Result.grade, Result.probabilities)
            .join(Result, Result.image_id == Image.id)
            .where(Image.filename != "other.jpg")
        ).all()
    assert len(rows) == 3
    assert len({(grade, tuple(probs)) for _, grade, probs in rows}) == 1


def test_a_moved_threshold_decides_new_uploads_afresh_and_rows_never_contradict_it(
    runtime: WorkerRuntime,
    submit: Callable,
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
) -> None:
    same = fundus_jpeg(grade=0, seed=13)
    _, first = submit([(same, "first.jpg")])
    grade_images(runtime, first)
    manifest = runtime.model.manifest
    # As `retinaq evaluate --target-sensitivity` does: same file, another operating point.
    strict = dataclasses.replace(manifest, referable_threshold=1e-6)
    moved = WorkerRuntime(
        runtime.settings,
        sessions,
        runtime.store,
        dataclasses.replace(runtime.model, manifest=strict),
    )
    _, second = submit([(same, "second.jpg")])
    assert grade_images(moved, second).inferred == 1, "not copied from the old threshold"
    with sessions() as session:
        rows = dict(
            session.execute(
                select(Image.filename, Result).join(Result, Result.image_id == Image.id)
            ).all()
        )
    old, new = rows["first.jpg"], rows["second.jpg"]
    assert (old.referable_threshold, new.referable_threshold) == (
        manifest.referable_threshold,
        1e-6,
    )
    for row in (old, new):
        assert row.referable == (row.referable_probability >= row.referable_threshold)
    assert new.referable is True


def test_claims_carry_a_lease(
    runtime: WorkerRuntime, submit: Callable, fundus_jpeg: Callable[..., bytes], sessions
) -> None:
    _, ids = submit([(fundus_jpeg(seed=1), "a.jpg")])
    with sessions.begin() as session:
        claim_images(session, ids, max_attempts=5, lease_s=60)
    with sessions() as session:
        image = session.get_one(Image, ids[0])
        assert image.state == ImageState.PROCESSING
        assert image.lease_expires_at is not None
        assert 55 <= (image.lease_expires_at - image.started_at).total_seconds() <= 61


def test_a_task_larger_than_the_model_batch_is_claimed_and_written_a_micro_batch_at_a_time(
    runtime: WorkerRuntime,
    submit: Callable,
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
) -> None:
    """20 images with a model batch of 8: three claims in turn, three model calls, and one
    commit for each micro-batch's results."""
    calls: list[int] = []
    model = runtime.model
    original = model.predict

    def counting_predict(inputs: np.ndarray) -> np.ndarray:
        calls.append(len(inputs))
        return original(inputs)

    _, ids = submit([(fundus_jpeg(seed=200 + i), f"{i}.jpg") for i in range(20)])
    model.predict = counting_predict  # type: ignore[method-assign]
    try:
        report = grade_images(runtime, ids)
    finally:
        del model.predict
    assert calls == [8, 8, 4]
    assert (report.graded, report.inferred) == (20, 20)
    with sessions() as session:
        # Rows written by one transaction share its PostgreSQL transaction id.
        per_commit = session.scalars(
            text("SELECT count(*) FROM results GROUP BY xmin::text ORDER BY count(*) DESC")
        ).all()
    assert per_commit == [8, 8, 4]


def test_a_lone_image_is_graded_on_its_own_without_waiting_for_company(
    runtime: WorkerRuntime, submit: Callable, fundus_jpeg: Callable[..., bytes]
) -> None:
    _, ids = submit([(fundus_jpeg(seed=300), "alone.jpg")])
    report = grade_images(runtime, ids)
    assert (report.claimed, report.graded, report.inferred) == (1, 1, 1)


def test_a_short_task_gathers_queued_company_within_the_maximum_wait(
    runtime: WorkerRuntime, submit: Callable, fundus_jpeg: Callable[..., bytes]
) -> None:
    """Two one-image uploads: the first task fills its model batch with the second image,
    and the second task then finds nothing left to do."""
    waiting = dataclasses.replace(
        runtime, settings=runtime.settings.model_copy(update={"batch_wait_ms": 150})
    )
    calls: list[int] = []
    original = runtime.model.predict

    def counting_predict(inputs: np.ndarray) -> np.ndarray:
        calls.append(len(inputs))
        return original(inputs)

    _, first = submit([(fundus_jpeg(seed=401), "first.jpg")])
    _, second = submit([(fundus_jpeg(seed=402), "second.jpg")])
    runtime.model.predict = counting_predict  # type: ignore[method-assign]
    try:
        report = grade_images(waiting, first)
    finally:
        del runtime.model.predict
    assert (report.claimed, report.graded, report.inferred) == (2, 2, 2)
    assert calls == [2], "both images went through the model together"
    assert grade_images(waiting, second).skipped == 1


def test_a_lone_image_waits_no_longer_than_the_maximum_for_company(
    runtime: WorkerRuntime, submit: Callable, fundus_jpeg: Callable[..., bytes]
) -> None:
    waiting = dataclasses.replace(
        runtime, settings=runtime.settings.model_copy(update={"batch_wait_ms": 50})
    )
    _, ids = submit([(fundus_jpeg(seed=403), "alone.jpg")])
    report = grade_images(waiting, ids)
    assert (report.claimed, report.graded) == (1, 1)


def test_an_unexpected_read_error_fails_that_image_alone(
    runtime: WorkerRuntime,
    submit: Callable,
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
) -> None:
    _, ids = submit([(fundus_jpeg(seed=600 + i), f"{i}.jpg") for i in range(3)])
    with sessions.begin() as session:  # a row pointing outside the store
        session.execute(
            update(Image).where(Image.id == ids[1]).values(storage_path="../../etc/passwd")
        )
    report = grade_images(runtime, ids)
    assert (report.graded, report.failed) == (2, 1)
    with sessions() as session:
        assert session.get_one(Image, ids[1]).error_code == "unreadable_image"
