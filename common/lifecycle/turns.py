"""Fair shares between programmes: which queued images a worker takes next.

The broker queue is one first-come line, so a programme that uploads 100,000 images would
otherwise make another programme's 20 wait hours behind them. A grading task therefore
stands for *an amount* of work, not for the images its upload sent: each claim takes a
micro-batch from the programmes in turn, the one served longest ago first, and a claim
short of its size is topped up from the next programme in turn, so batches stay full.
Within one programme images go oldest first. A programme newly waiting is served by the
next claim any worker makes, so its wait is about one micro-batch per worker whatever the
backlog ahead of it in the broker.

Every upload still sends one task per ``task_size`` images, and every task claims until
it has taken that many or the queue is empty, so the tasks in the broker always cover the
queued images however the claims interleave programmes. Exactly-once is the claim's own
guard (:func:`common.lifecycle.claims.claim_images`); images are selected ``FOR UPDATE
SKIP LOCKED``, and a turn row being marked by another claim is skipped, so two workers
choosing at once take different images, never wait on each other's choice (only, for
milliseconds, on a shared batch's counter row), and never find nothing while claimable
work remains.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import exists, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from common.db.tables import Image, ImageState, Programme, ProgrammeTurn, utcnow
from common.lifecycle.claims import Claim, claim_images


def claim_in_turn(session: Session, limit: int, *, max_attempts: int, lease_s: int) -> list[Claim]:
    """Claim up to ``limit`` queued images, programmes in turn; an empty queue gives []."""
    if limit <= 0:
        return []
    chosen: list[uuid.UUID] = []
    served: list[uuid.UUID] = []
    for programme_id in programmes_in_turn(session):
        taken = session.scalars(
            select(Image.id)
            .where(Image.programme_id == programme_id, Image.state == ImageState.QUEUED)
            .order_by(Image.id)
            .limit(limit - len(chosen))
            .with_for_update(skip_locked=True)
        ).all()
        if taken:
            chosen += taken
            served.append(programme_id)
        if len(chosen) >= limit:
            break
    mark_served(session, served, utcnow())
    return claim_images(session, chosen, max_attempts=max_attempts, lease_s=lease_s)


def programmes_in_turn(session: Session) -> list[uuid.UUID]:
    """Programmes with queued images, the one served longest ago (or never) first.

    One probe of the partial index of queued images per programme, so the cost follows the
    number of programmes, not the number of images.
    """
    waiting = exists().where(Image.programme_id == Programme.id, Image.state == ImageState.QUEUED)
    return list(
        session.scalars(
            select(Programme.id)
            .outerjoin(ProgrammeTurn, ProgrammeTurn.programme_id == Programme.id)
            .where(waiting)
            .order_by(ProgrammeTurn.served_at.asc().nulls_first(), Programme.id)
        )
    )


def mark_served(session: Session, programme_ids: list[uuid.UUID], now: datetime) -> None:
    """Send these programmes to the back of the turn order, without waiting.

    A turn row another claim is marking at this moment is skipped, not waited for: that
    claim is sending the programme to the back already. So claimers never queue on a busy
    programme's row, however many workers serve it. Rows are made with their programmes
    (:func:`common.access.apikeys.create_programme`); one found missing is added here.
    """
    if not programme_ids:
        return
    served = sorted(set(programme_ids))
    present = set(
        session.scalars(
            select(ProgrammeTurn.programme_id).where(ProgrammeTurn.programme_id.in_(served))
        )
    )
    if missing := [p for p in served if p not in present]:
        postgres = session.get_bind().dialect.name == "postgresql"
        insert = postgresql.insert if postgres else sqlite.insert
        session.execute(
            insert(ProgrammeTurn)
            .values([{"programme_id": p, "served_at": now} for p in missing])
            .on_conflict_do_nothing(index_elements=[ProgrammeTurn.programme_id])
        )
    free = (
        select(ProgrammeTurn.programme_id)
        .where(ProgrammeTurn.programme_id.in_(served))
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    session.execute(
        update(ProgrammeTurn)
        .where(ProgrammeTurn.programme_id.in_(free))
        .values(served_at=now)
        .execution_options(synchronize_session=False)
    )
