"""API keys: random, shown once, stored only as a SHA-256 hash with a short public prefix."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from common.db.tables import ApiKey, Programme, ProgrammeTurn, utcnow

KEY_PREFIX = "rq_"
PUBLIC_PREFIX_LENGTH = len(KEY_PREFIX) + 8


@dataclass(frozen=True)
class IssuedKey:
    """A freshly created key: ``secret`` is never stored and cannot be shown again."""

    programme_id: uuid.UUID
    prefix: str
    secret: str


@dataclass(frozen=True)
class KeyHolder:
    """Who presented a valid key: the programme, and the key's public prefix for the audit log."""

    programme_id: uuid.UUID
    prefix: str


def hash_api_key(secret: str) -> str:
    """SHA-256 of the key; a fast hash suffices because keys carry 256 random bits."""
    return hashlib.sha256(secret.encode()).hexdigest()


def issue_api_key(
    session: Session, programme: Programme, expires_at: datetime | None = None
) -> IssuedKey:
    """A new key for ``programme``, valid until ``expires_at`` if given; the caller commits."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    prefix = secret[:PUBLIC_PREFIX_LENGTH]
    session.add(
        ApiKey(
            programme_id=programme.id,
            prefix=prefix,
            key_hash=hash_api_key(secret),
            expires_at=expires_at,
        )
    )
    return IssuedKey(programme.id, prefix, secret)


def create_programme(
    session: Session, name: str, key_expires_at: datetime | None = None
) -> tuple[Programme, IssuedKey]:
    """A new programme with its first key and its place in the turn order (first, never
    served: :mod:`common.lifecycle.turns`); the caller commits."""
    programme = Programme(name=name)
    session.add(programme)
    session.flush()
    session.add(ProgrammeTurn(programme_id=programme.id, served_at=None))
    return programme, issue_api_key(session, programme, key_expires_at)


def programme_for_key(
    session: Session, secret: str, now: datetime | None = None
) -> KeyHolder | None:
    """The programme and prefix of a presented key, or None when unknown, revoked or expired."""
    if not secret.startswith(KEY_PREFIX) or len(secret) > 200:
        return None
    moment = now or utcnow()
    row = session.execute(
        select(ApiKey.programme_id, ApiKey.prefix).where(
            ApiKey.key_hash == hash_api_key(secret),
            ApiKey.revoked_at.is_(None),
            or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > moment),
        )
    ).first()
    return None if row is None else KeyHolder(row.programme_id, row.prefix)


def revoke_api_key(session: Session, prefix: str, when: datetime | None = None) -> bool:
    """Revoke the key with this prefix; False when there is no such active key."""
    key = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if key is None or key.revoked_at is not None:
        return False
    key.revoked_at = when or utcnow()
    return True
