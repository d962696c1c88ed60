"""A programme's webhook settings: its default callback URL, events and signing secret.

The secret is made the first time a programme's webhooks are set, and again only when the
operator rotates it; the caller shows it once. A rotated secret signs every attempt from
then on, retries of earlier events included: receivers switch at once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.db.tables import ProgrammeWebhook, utcnow
from common.webhooks.signing import new_secret


@dataclass(frozen=True)
class WebhookSetup:
    """A programme's webhook settings after a change; ``new_secret`` only when one was made."""

    url: str | None
    on_referable: bool
    new_secret: str | None


def configure_webhook(
    session: Session,
    programme_id: uuid.UUID,
    *,
    url: str | None = None,
    clear_url: bool = False,
    on_referable: bool | None = None,
    rotate_secret: bool = False,
) -> WebhookSetup:
    """Create or change a programme's webhook settings; what was not given is kept."""
    row = session.get(ProgrammeWebhook, programme_id, with_for_update=True)
    now = utcnow()
    secret = None
    if row is None:
        secret = new_secret()
        row = ProgrammeWebhook(
            programme_id=programme_id,
            secret=secret,
            on_referable=False,
            created_at=now,
            secret_created_at=now,
        )
        session.add(row)
    elif rotate_secret:
        secret = new_secret()
        row.secret, row.secret_created_at = secret, now
    if clear_url:
        row.url = None
    elif url is not None:
        row.url = url
    if on_referable is not None:
        row.on_referable = on_referable
    session.flush()
    return WebhookSetup(row.url, row.on_referable, secret)


def can_sign(session: Session, programme_id: uuid.UUID) -> bool:
    """Whether the programme has a signing secret, without which no event is sent."""
    found = session.scalar(
        select(ProgrammeWebhook.programme_id).where(ProgrammeWebhook.programme_id == programme_id)
    )
    return found is not None
