"""Per-programme quotas on submissions: images waiting to be graded, and images per minute.

A programme's ``max_pending_images`` and ``max_images_per_minute`` override the settings'
defaults when set. A submission that would take the programme's queued plus processing
images past the first is refused with 429 ``quota_exceeded``; one that would take the images
created in the last 60 seconds past the second is refused with 429 ``rate_limited``. Both
carry ``Retry-After``.

Submissions check twice: before any file is moved into the store (cheap, unlocked), and
again just before the commit under a lock on the programme's row, so that concurrent
submissions of one programme cannot together overshoot what each saw.
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.errors import ApiError
from common.db.tables import (
    FINISHED_BATCH_STATES,
    PENDING_IMAGE_STATES,
    Batch,
    BatchStat,
    Image,
    Programme,
)
from common.settings import Settings

RATE_WINDOW = timedelta(seconds=60)
# How long a client refused for too many pending images should wait: grading frees capacity
# continuously, so a minute is a fair first back-off without promising anything.
PENDING_RETRY_AFTER_S = 60


def enforce_quotas(
    session: Session,
    settings: Settings,
    programme_id: uuid.UUID,
    adding: int,
    now: datetime,
    *,
    lock: bool = False,
) -> None:
    """429 unless ``adding`` more images fit both quotas; ``lock`` serialises the final check.

    The caller's new image rows, added to the session but not flushed, are not counted:
    they are ``adding``.
    """
    with session.no_autoflush:
        _check(session, settings, programme_id, adding, now, lock)


def _check(
    session: Session,
    settings: Settings,
    programme_id: uuid.UUID,
    adding: int,
    now: datetime,
    lock: bool,
) -> None:
    query = select(Programme.max_pending_images, Programme.max_images_per_minute).where(
        Programme.id == programme_id
    )
    if lock:
        # NO KEY UPDATE: our own inserts hold KEY SHARE on this row through their foreign
        # keys, and a plain FOR UPDATE would deadlock two submitters against each other.
        query = query.with_for_update(key_share=True)
    limits = session.execute(query).one()
    max_pending = _or_default(limits.max_pending_images, settings.default_max_pending_images)
    max_per_minute = _or_default(
        limits.max_images_per_minute, settings.default_max_images_per_minute
    )

    largest = min(max_pending, max_per_minute)
    if adding > largest:
        raise ApiError(
            422,
            "request_exceeds_quota",
            f"this request adds {adding} images but the programme's quotas admit at most "
            f"{largest} at a time; split it into smaller requests",
        )

    pending = pending_images(session, programme_id)
    if (pending or 0) + adding > max_pending:
        raise ApiError(
            429,
            "quota_exceeded",
            f"the programme may have at most {max_pending} images waiting to be graded; "
            f"{pending} are waiting and this request adds {adding}",
            {"Retry-After": str(PENDING_RETRY_AFTER_S)},
        )

    window_start = now - RATE_WINDOW
    recent = session.scalar(
        select(func.count())
        .select_from(Image)
        .where(Image.programme_id == programme_id, Image.created_at > window_start)
    )
    surplus = (recent or 0) + adding - max_per_minute
    if surplus > 0:
        raise ApiError(
            429,
            "rate_limited",
            f"the programme may submit at most {max_per_minute} images per minute; "
            f"{recent} were submitted in the last minute and this request adds {adding}",
            {"Retry-After": str(_seconds_until_window_frees(session, programme_id, now, surplus))},
        )


def pending_images(session: Session, programme_id: uuid.UUID) -> int:
    """The programme's queued and processing images, from its unfinished batches' counter
    rows (``batch_stats``, kept by triggers in the transactions that move images), not a
    count over ``images``: every upload asks, and a count over a 100,000-image backlog on
    each request would make ingesting a large batch quadratic."""
    total = session.scalar(
        select(func.coalesce(func.sum(BatchStat.value), 0))
        .join(Batch, Batch.id == BatchStat.batch_id)
        .where(
            Batch.programme_id == programme_id,
            Batch.state.not_in(FINISHED_BATCH_STATES),
            BatchStat.stat.in_([state.value for state in PENDING_IMAGE_STATES]),
        )
    )
    return int(total or 0)


def _or_default(limit: int | None, default: int) -> int:
    """NULL means the deployment-wide default; 0 is a real limit that admits nothing."""
    return default if limit is None else limit


def _seconds_until_window_frees(
    session: Session, programme_id: uuid.UUID, now: datetime, surplus: int
) -> int:
    """When the ``surplus``-th oldest image of the window leaves it; a full window if never."""
    oldest_needed = session.scalar(
        select(Image.created_at)
        .where(Image.programme_id == programme_id, Image.created_at > now - RATE_WINDOW)
        .order_by(Image.created_at)
        .offset(surplus - 1)
        .limit(1)
    )
    if oldest_needed is None:
        return int(RATE_WINDOW.total_seconds())
    if oldest_needed.tzinfo is None:
        oldest_needed = oldest_needed.replace(tzinfo=now.tzinfo)
    wait = (oldest_needed + RATE_WINDOW - now).total_seconds()
    return max(1, math.ceil(wait))
