"""Opaque keyset cursors: the last id seen, base64url-encoded so clients do not build them."""

from __future__ import annotations

import base64
import binascii
import re
import uuid

from api.errors import ApiError

_CURSOR_ALPHABET = re.compile(r"[A-Za-z0-9_-]+")


def encode_cursor(last_id: uuid.UUID) -> str:
    """An opaque cursor after ``last_id``."""
    return base64.urlsafe_b64encode(last_id.bytes).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> uuid.UUID | None:
    """The id a cursor points after; 400 for anything we did not issue."""
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        if len(raw) != 16:
            raise ValueError("wrong length")
        return uuid.UUID(bytes=raw)
    except (ValueError, binascii.Error) as exc:
        raise ApiError(400, "invalid_cursor", "the cursor is not valid") from exc


def encode_text_cursor(last: str) -> str:
    """An opaque cursor after a text key (a patient id)."""
    return base64.urlsafe_b64encode(last.encode()).decode().rstrip("=")


def decode_text_cursor(cursor: str | None) -> str | None:
    """The text key a cursor points after; 400 for anything we did not issue."""
    if not cursor:
        return None
    try:
        if not _CURSOR_ALPHABET.fullmatch(cursor):
            raise ValueError("not base64url")
        value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not value:
            raise ValueError("empty")
        return value
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_cursor", "the cursor is not valid") from exc


def parse_limit(raw: str | None, default: int, maximum: int) -> int:
    """The page size; 400 when it is not an integer in 1..maximum."""
    if raw is None or raw == "":
        return default
    try:
        limit = int(raw)
    except ValueError as exc:
        raise ApiError(400, "invalid_limit", "limit must be an integer") from exc
    if not 1 <= limit <= maximum:
        raise ApiError(400, "invalid_limit", f"limit must be between 1 and {maximum}")
    return limit
