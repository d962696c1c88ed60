"""Recording what grading decided: results, image states and batch progress in one go.

A result row and its image's move to ``graded`` or ``ungradable`` commit together, and only
for claims still ours: the attempt number a claim was made under fences out a superseded
delivery. Identical bytes reuse the outcome the same model already stored for the same
programme, copied as stored so duplicates always agree.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Insert, Table, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from common.db.tables import Batch, Image, ImageState, Result, utcnow
from common.ids import uuid7
from common.imaging.decode import ImageDecodeError
from common.lifecycle.claims import Claim
from common.lifecycle.progress import settle_batch
from common.modelling.manifest import ModelManifest
from common.screening.outcome import GradeOutcome, ImageOutcome


@dataclass(frozen=True)
class Recorder:
    """What recording needs of a worker: its sessions, the served model's manifest, and
    the two settings that decide which graded images want a heat map."""

    sessions: sessionmaker[Session]
    manifest: ModelManifest
    heatmaps: bool
    borderline_margin: float


def known_outcomes(
    recorder: Recorder, claims: list[Claim]
) -> dict[tuple[uuid.UUID, str], ImageOutcome]:
    """Outcomes this model already gave identical bytes of the same programme, copied as
    stored (not re-derived from rounded probabilities) so duplicates always agree.

    Only outcomes decided under the manifest's current referable threshold and
    preprocessing count: a threshold moved by ``retinaq evaluate`` re-decides new uploads.
    """
    manifest = recorder.manifest
    pairs = {(c.programme_id, c.sha256) for c in claims}
    with recorder.sessions() as session:
        rows = session.execute(
            select(Image.programme_id, Image.sha256, Result)
            .join(Result, Result.image_id == Image.id)
            .where(
                tuple_(Image.programme_id, Image.sha256).in_(pairs),
                Result.model_sha256 == manifest.sha256,
                Result.referable_threshold == manifest.referable_threshold,
                Result.preprocessing_version == manifest.preprocessing_version,
            )
        ).all()
    return {(programme_id, sha): stored_outcome(result) for programme_id, sha, result in rows}


def stored_outcome(result: Result) -> ImageOutcome:
    """The outcome a result row holds."""
    grade = None
    if result.gradable:
        assert result.grade is not None and result.grade_name is not None
        assert result.probabilities is not None and result.referable is not None
        grade = GradeOutcome(
            grade=result.grade,
            grade_name=result.grade_name,
            probabilities=tuple(result.probabilities),
            expected_grade=result.expected_grade or 0.0,
            referable=result.referable,
            referable_probability=result.referable_probability or 0.0,
            referable_threshold=result.referable_threshold,
            confidence=result.confidence or 0.0,
        )
    return ImageOutcome(
        gradable=result.gradable,
        reasons=tuple(result.ungradable_reasons),
        quality=dict(result.quality or {}),
        grade=grade,
    )


@dataclass(frozen=True)
class Recorded:
    """What one write committed, and which graded images now want a heat map."""

    graded: int
    ungradable: int
    failed: int
    to_explain: list[uuid.UUID]


def record_outcomes(
    recorder: Recorder,
    claims: list[Claim],
    predictions: list[tuple[Claim, ImageOutcome]],
    failures: list[tuple[Claim, ImageDecodeError]],
    inference_ms: float,
) -> Recorded:
    """Write results and failures in one transaction, only for claims still ours.

    Claims superseded by a later delivery write nothing.
    """
    with recorder.sessions.begin() as session:
        owned = _still_owned(session, claims)
        ours = [(claim, outcome) for claim, outcome in predictions if claim.image_id in owned]
        to_explain = _wanting_heatmaps(recorder, session, ours)
        wanted = set(to_explain)
        rows = [
            _result_row(recorder.manifest, claim, outcome, inference_ms, claim.image_id in wanted)
            for claim, outcome in ours
        ]
        if rows:
            session.execute(_insert_ignoring_duplicates(session, Result.__table__), rows)
        graded = [c.image_id for c, outcome in ours if outcome.gradable]
        ungradable = [c.image_id for c, outcome in ours if not outcome.gradable]
        _finish(session, graded, ImageState.GRADED)
        _finish(session, ungradable, ImageState.UNGRADABLE)
        failed = [(claim, error) for claim, error in failures if claim.image_id in owned]
        for claim, error in failed:
            _finish(session, [claim.image_id], ImageState.FAILED, error)
    with recorder.sessions.begin() as session:
        for batch_id in sorted({c.batch_id for c in claims}):
            settle_batch(session, batch_id)
    return Recorded(len(graded), len(ungradable), len(failed), to_explain)


def _wanting_heatmaps(
    recorder: Recorder, session: Session, ours: list[tuple[Claim, ImageOutcome]]
) -> list[uuid.UUID]:
    """Graded images whose result wants a heat map: referable, borderline, or asked for."""
    if not recorder.heatmaps or not ours:
        return []
    explaining = set(
        session.scalars(
            select(Batch.id).where(
                Batch.id.in_({c.batch_id for c, _ in ours}), Batch.explain.is_(True)
            )
        )
    )
    wanted = []
    for claim, outcome in ours:
        grade = outcome.grade
        if grade is None:
            continue
        borderline = (
            abs(grade.referable_probability - grade.referable_threshold)
            <= recorder.borderline_margin
        )
        if claim.batch_id in explaining or grade.referable or borderline:
            wanted.append(claim.image_id)
    return wanted


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
    if not image_ids:
        return
    session.execute(
        update(Image)
        .where(Image.id.in_(image_ids), Image.state == ImageState.PROCESSING)
        .values(
            state=state,
            finished_at=utcnow(),
            lease_expires_at=None,
            error_code=error.code if error else None,
            error_message=error.message if error else None,
        )
        .execution_options(synchronize_session=False)
    )


def _result_row(
    manifest: ModelManifest,
    claim: Claim,
    outcome: ImageOutcome,
    inference_ms: float,
    explain: bool,
) -> dict[str, Any]:
    grade = outcome.grade
    now = utcnow()
    return {
        "id": uuid7(),
        "image_id": claim.image_id,
        "batch_id": claim.batch_id,
        "gradable": outcome.gradable,
        "ungradable_reasons": list(outcome.reasons),
        "quality": outcome.quality,
        "grade": grade.grade if grade else None,
        "grade_name": grade.grade_name if grade else None,
        "probabilities": list(grade.probabilities) if grade else None,
        "expected_grade": grade.expected_grade if grade else None,
        "referable": grade.referable if grade else None,
        "referable_probability": grade.referable_probability if grade else None,
        # The threshold the referral was decided against, so a row never contradicts itself.
        "referable_threshold": grade.referable_threshold if grade else manifest.referable_threshold,
        "confidence": grade.confidence if grade else None,
        "model_name": manifest.name,
        "model_version": manifest.version,
        "model_sha256": manifest.sha256,
        "preprocessing_version": manifest.preprocessing_version,
        "inference_ms": round(inference_ms, 3) if grade else 0.0,
        "heatmap_requested_at": now if explain else None,
        "created_at": now,
    }


def _insert_ignoring_duplicates(session: Session, table: Table) -> Insert:
    """INSERT that leaves an existing (image, model) result alone: writes are idempotent."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(table).on_conflict_do_nothing(index_elements=["image_id", "model_sha256"])
