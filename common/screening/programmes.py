"""What a programme's screening rules read from the database: its grading scheme, and
each patient's code at their previous screening (for a scheme's repeat recall)."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from common.db.tables import Image, ProgrammeScheme, Result, utcnow
from common.screening.patients import EyeImage, roll_up
from common.screening.schemes import DEFAULT_SCHEME, GradingScheme, scheme_from_row

HISTORY_SLICE = 1000


def programme_scheme(session: Session, programme_id: uuid.UUID) -> GradingScheme:
    """The programme's scheme; ICDR with 12-month recall when none was set."""
    row = session.get(ProgrammeScheme, programme_id)
    if row is None:
        return DEFAULT_SCHEME
    return scheme_from_row(row.scheme, row.mapping, row.recall)


def save_scheme(session: Session, programme_id: uuid.UUID, scheme: GradingScheme) -> None:
    """Store a checked scheme for the programme, replacing any before it."""
    row = session.get(ProgrammeScheme, programme_id)
    if row is None:
        row = ProgrammeScheme(programme_id=programme_id)
        session.add(row)
    row.scheme = scheme.name
    row.mapping = list(scheme.mapping)
    row.recall = dict(scheme.recall)
    row.updated_at = utcnow()


def eye_images(rows: Iterable[tuple[Image, Result | None]]) -> dict[str, list[EyeImage]]:
    """Image rows grouped by patient, as the roll-up takes them."""
    by_patient: dict[str, list[EyeImage]] = {}
    for image, result in rows:
        by_patient.setdefault(image.patient_id or "", []).append(
            EyeImage(
                image_id=str(image.id),
                laterality=image.laterality,
                state=image.state.value,
                grade=result.grade if result else None,
                referable=result.referable if result else None,
            )
        )
    return by_patient


def previous_codes(
    session: Session,
    programme_id: uuid.UUID,
    batch_id: uuid.UUID,
    patient_ids: Collection[str],
    scheme: GradingScheme,
) -> dict[str, str]:
    """Each patient's code in the latest earlier batch of the programme that holds them.

    Batch ids are UUIDv7, so "earlier" is "smaller id". A patient whose previous batch is
    still pending has no previous code. The codes come from today's scheme, so a changed
    mapping is applied to the past the same way as to the present.
    """
    codes: dict[str, str] = {}
    ordered = list(patient_ids)
    # In slices: a batch may name more patients than one statement may carry parameters.
    for start in range(0, len(ordered), HISTORY_SLICE):
        codes.update(
            _previous_codes(
                session, programme_id, batch_id, ordered[start : start + HISTORY_SLICE], scheme
            )
        )
    return codes


def _previous_codes(
    session: Session,
    programme_id: uuid.UUID,
    batch_id: uuid.UUID,
    patient_ids: list[str],
    scheme: GradingScheme,
) -> dict[str, str]:
    # dense_rank, not max(): PostgreSQL has no max() over uuid.
    rank = (
        func.dense_rank()
        .over(partition_by=Image.patient_id, order_by=Image.batch_id.desc())
        .label("rank")
    )
    earlier = (
        select(Image.id, rank)
        .where(
            Image.programme_id == programme_id,
            Image.patient_id.in_(patient_ids),
            Image.batch_id < batch_id,
        )
        .subquery()
    )
    rows = session.execute(
        select(Image, Result)
        .join(earlier, (earlier.c.id == Image.id) & (earlier.c.rank == 1))
        .outerjoin(Result, Result.image_id == Image.id)
        .order_by(Image.patient_id, Image.id)
    ).all()
    codes: dict[str, str] = {}
    for patient_id, images in eye_images(rows).items():
        code = roll_up(patient_id, images, scheme).code
        if code is not None:
            codes[patient_id] = code
    return codes
