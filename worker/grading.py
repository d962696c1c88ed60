"""Grading a micro-batch of images: claim, decode, predict, record, all guarded by state.

An image is *claimed* by one guarded UPDATE that moves it to ``processing`` and bumps
``attempts``; that attempt number fences the final write, so if the task is delivered
twice only the latest claim can record a result. A result row and the image's move to
``graded`` commit together, and a bad image fails alone without touching its neighbours.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Insert, Table, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from common.batch_progress import mark_batches_processing, settle_batch
from common.imaging import ImageDecodeError, normalise, prepare_pixels
from common.models import PENDING_IMAGE_STATES, Image, ImageState, Result, utcnow
from common.results import interpret_probabilities

if TYPE_CHECKING:
    from worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5


@dataclass(frozen=True)
class Claim:
    """An image this task now owns, fenced by its attempt number."""

    image_id: uuid.UUID
    batch_id: uuid.UUID
    storage_path: str
    attempt: int


@dataclass
class GradingReport:
    """What one task did, for logs and tests."""

    claimed: int = 0
    graded: int = 0
    failed: int = 0
    skipped: int = 0
    fenced_out: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)


def grade_images(runtime: WorkerRuntime, image_ids: list[uuid.UUID]) -> GradingReport:
    """Grade these images (those still pending); safe to call again with the same ids."""
    report = GradingReport()
    with runtime.sessions.begin() as session:
        claims = claim_images(session, image_ids)
    report.claimed = len(claims)
    report.skipped = len(set(image_ids)) - len(claims)
    if not claims:
        return report

    clock = time.perf_counter()
    pixels, decoded, failures = decode_claims(runtime, claims)
    report.timings_ms["decode"] = (time.perf_counter() - clock) * 1000

    clock = time.perf_counter()
    probabilities = np.zeros((0, len(runtime.model.manifest.class_names)))
    if decoded:
        inputs = normalise(np.stack(pixels), runtime.model.manifest.preprocessing)
        probabilities = runtime.model.predict(inputs)
    report.timings_ms["infer"] = (time.perf_counter() - clock) * 1000

    clock = time.perf_counter()
    per_image_ms = report.timings_ms["infer"] / max(len(decoded), 1)
    graded, failed = record_outcomes(
        runtime, claims, list(zip(decoded, probabilities, strict=True)), failures, per_image_ms
    )
    report.graded, report.failed = graded, failed
    report.fenced_out = len(claims) - graded - failed
    report.timings_ms["write"] = (time.perf_counter() - clock) * 1000
    return report


def record_outcomes(
    runtime: WorkerRuntime,
    claims: list[Claim],
    predictions: list[tuple[Claim, np.ndarray]],
    failures: list[tuple[Claim, ImageDecodeError]],
    inference_ms: float,
) -> tuple[int, int]:
    """Write results and failures in one transaction, only for claims still ours.

    Returns (graded, failed). Claims superseded by a later delivery write nothing.
    """
    with runtime.sessions.begin() as session:
        owned = _still_owned(session, claims)
        results = [
            _result_row(runtime, claim, probs, inference_ms)
            for claim, probs in predictions
            if claim.image_id in owned
        ]
        if results:
            session.execute(_insert_ignoring_duplicates(session, Result.__table__), results)
            _finish(session, [r["image_id"] for r in results], ImageState.GRADED)
        failed = [(claim, error) for claim, error in failures if claim.image_id in owned]
        for claim, error in failed:
            _finish(session, [claim.image_id], ImageState.FAILED, error)
    with runtime.sessions.begin() as session:
        for batch_id in sorted({c.batch_id for c in claims}):
            settle_batch(session, batch_id)
    return len(results), len(failed)


def claim_images(session: Session, image_ids: list[uuid.UUID]) -> list[Claim]:
    """Move pending images to ``processing`` with a new attempt; fail the exhausted ones."""
    ids = list(dict.fromkeys(image_ids))
    now = utcnow()
    session.execute(
        update(Image)
        .where(
            Image.id.in_(ids),
            Image.state.in_(PENDING_IMAGE_STATES),
            Image.attempts >= MAX_ATTEMPTS,
        )
        .values(
            state=ImageState.FAILED,
            error_code="too_many_attempts",
            error_message=f"grading was attempted {MAX_ATTEMPTS} times without finishing",
            finished_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    rows = session.execute(
        update(Image)
        .where(Image.id.in_(ids), Image.state.in_(PENDING_IMAGE_STATES))
        .values(state=ImageState.PROCESSING, attempts=Image.attempts + 1, started_at=now)
        .returning(Image.id, Image.batch_id, Image.storage_path, Image.attempts)
        .execution_options(synchronize_session=False)
    ).all()
    claims = [Claim(*row) for row in rows]
    mark_batches_processing(session, {c.batch_id for c in claims})
    order = {image_id: position for position, image_id in enumerate(ids)}
    return sorted(claims, key=lambda c: order[c.image_id])


def decode_claims(
    runtime: WorkerRuntime, claims: list[Claim]
) -> tuple[list[np.ndarray], list[Claim], list[tuple[Claim, ImageDecodeError]]]:
    """Read and preprocess each claimed image; a bad one becomes a failure, not an exception."""
    size = runtime.model.manifest.input_size
    max_pixels = runtime.settings.max_image_pixels
    pixels: list[np.ndarray] = []
    decoded: list[Claim] = []
    failures: list[tuple[Claim, ImageDecodeError]] = []
    for claim in claims:
        try:
            data = runtime.store.read(claim.storage_path)
            pixels.append(prepare_pixels(data, size=size, max_pixels=max_pixels))
            decoded.append(claim)
        except FileNotFoundError:
            failures.append(
                (claim, ImageDecodeError("missing_file", "the stored image file is missing"))
            )
        except ImageDecodeError as error:
            failures.append((claim, error))
    return pixels, decoded, failures


def _still_owned(session: Session, claims: list[Claim]) -> set[uuid.UUID]:
    """Images whose latest claim is still ours, locked until this transaction commits."""
    rows = session.scalars(
        select(Image.id)
        .where(
            tuple_(Image.id, Image.attempts).in_([(c.image_id, c.attempt) for c in claims]),
            Image.state == ImageState.PROCESSING,
        )
        .with_for_update()
    )
    return set(rows)


def _finish(
    session: Session,
    image_ids: list[uuid.UUID],
    state: ImageState,
    error: ImageDecodeError | None = None,
) -> None:
    session.execute(
        update(Image)
        .where(Image.id.in_(image_ids), Image.state == ImageState.PROCESSING)
        .values(
            state=state,
            finished_at=utcnow(),
            error_code=error.code if error else None,
            error_message=error.message if error else None,
        )
        .execution_options(synchronize_session=False)
    )


def _result_row(
    runtime: WorkerRuntime, claim: Claim, probabilities: np.ndarray, inference_ms: float
) -> dict[str, Any]:
    manifest = runtime.model.manifest
    outcome = interpret_probabilities(probabilities, manifest)
    return {
        "id": uuid.uuid4(),
        "image_id": claim.image_id,
        "batch_id": claim.batch_id,
        "grade": outcome.grade,
        "grade_name": outcome.grade_name,
        "probabilities": list(outcome.probabilities),
        "referable": outcome.referable,
        "referable_probability": outcome.referable_probability,
        "referable_threshold": outcome.referable_threshold,
        "confidence": outcome.confidence,
        "model_name": manifest.name,
        "model_version": manifest.version,
        "model_sha256": manifest.sha256,
        "inference_ms": round(inference_ms, 3),
        "created_at": utcnow(),
    }


def _insert_ignoring_duplicates(session: Session, table: Table) -> Insert:
    """INSERT that leaves an existing (image, model) result alone: writes are idempotent."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(table).on_conflict_do_nothing(index_elements=["image_id", "model_sha256"])
