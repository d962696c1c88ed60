"""Data access scoped to one programme: no view can reach another programme's rows.

Every query an API request runs goes through :class:`ProgrammeScope`, which filters by the
authenticated programme, so isolation does not depend on each view remembering to check.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Row, select
from sqlalchemy.orm import Session

from common.db.tables import Batch, BatchStat, Image, ImageState, Result
from common.screening.grades import GRADES


@dataclass(frozen=True)
class BatchSummary:
    """Aggregates behind a batch status: counts per image state and per grade."""

    state_counts: dict[str, int]
    grade_counts: dict[int, int]
    referable_count: int


class ProgrammeScope:
    """The rows one programme may see."""

    def __init__(self, session: Session, programme_id: uuid.UUID) -> None:
        self.session = session
        self.programme_id = programme_id

    def batch(self, batch_id: uuid.UUID, *, for_update: bool = False) -> Batch | None:
        """One of this programme's batches."""
        query = select(Batch).where(Batch.id == batch_id, Batch.programme_id == self.programme_id)
        if for_update:
            # NO KEY UPDATE: workers inserting results hold KEY SHARE on this row through
            # the foreign key; a plain FOR UPDATE would deadlock against them.
            query = query.with_for_update(key_share=True)
        return self.session.scalar(query)

    def image_with_result(self, image_id: uuid.UUID) -> Row[Image, Result | None] | None:
        """One of this programme's images and its result, if graded."""
        return self.session.execute(
            select(Image, Result)
            .outerjoin(Result, Result.image_id == Image.id)
            .where(Image.id == image_id, Image.programme_id == self.programme_id)
        ).first()

    def batches_page(self, after: uuid.UUID | None, limit: int) -> Sequence[Batch]:
        """This programme's batches, newest id last, ``limit + 1`` rows to detect a next page."""
        query = select(Batch).where(Batch.programme_id == self.programme_id)
        if after is not None:
            query = query.where(Batch.id > after)
        return self.session.scalars(query.order_by(Batch.id).limit(limit + 1)).all()

    def images_page(
        self, batch: Batch, after: uuid.UUID | None, limit: int
    ) -> Sequence[Row[Image, Result | None]]:
        """A batch's images with their results, in submission order, ``limit + 1`` rows."""
        query = (
            select(Image, Result)
            .outerjoin(Result, Result.image_id == Image.id)
            .where(Image.batch_id == batch.id, Image.programme_id == self.programme_id)
        )
        if after is not None:
            query = query.where(Image.id > after)
        return self.session.execute(query.order_by(Image.id).limit(limit + 1)).all()

    def patients_page(
        self, batch: Batch, after: str | None, limit: int
    ) -> tuple[list[str], Sequence[Row[Image, Result | None]]]:
        """Up to ``limit + 1`` patient ids of a batch in order, and the first ``limit``
        patients' images with their results."""
        query = (
            select(Image.patient_id)
            .where(
                Image.batch_id == batch.id,
                Image.programme_id == self.programme_id,
                Image.patient_id.is_not(None),
            )
            .distinct()
            .order_by(Image.patient_id)
            .limit(limit + 1)
        )
        if after is not None:
            query = query.where(Image.patient_id > after)
        patient_ids = [p for p in self.session.scalars(query) if p is not None]
        rows = self.session.execute(
            select(Image, Result)
            .outerjoin(Result, Result.image_id == Image.id)
            .where(
                Image.batch_id == batch.id,
                Image.programme_id == self.programme_id,
                Image.patient_id.in_(patient_ids[:limit]),
            )
            .order_by(Image.patient_id, Image.id)
        ).all()
        return patient_ids, rows

    def batch_with_summary(self, batch_id: uuid.UUID) -> tuple[Batch, BatchSummary] | None:
        """One of this programme's batches and its trigger-kept counters, in one query."""
        rows = self.session.execute(
            select(Batch, BatchStat.stat, BatchStat.value)
            .outerjoin(BatchStat, BatchStat.batch_id == Batch.id)
            .where(Batch.id == batch_id, Batch.programme_id == self.programme_id)
        ).all()
        if not rows:
            return None
        stats = {stat: int(value) for _, stat, value in rows if stat is not None}
        return rows[0][0], BatchSummary(
            state_counts={state.value: stats.get(state.value, 0) for state in ImageState},
            grade_counts={grade: stats.get(f"grade_{grade}", 0) for grade in GRADES},
            referable_count=stats.get("referable", 0),
        )
