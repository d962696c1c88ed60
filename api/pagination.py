"""Keyset pagination: sealed cursors (``api.cursors``) for each listing, and the page size."""

from __future__ import annotations

import uuid

from api.cursors import InvalidCursor
from api.errors import ApiError
from api.state import api_state


def _invalid() -> ApiError:
    return ApiError(400, "invalid_cursor", "the cursor is not valid; start again without one")


def encode_cursor(last_id: uuid.UUID, listing: str, scope_id: uuid.UUID | None = None) -> str:
    """A cursor after ``last_id`` that only ``listing`` (of ``scope_id``, the batch or, for
    the batches listing, the programme) accepts."""
    return api_state().cursors.seal(last_id.bytes, listing, scope_id)


def decode_cursor(
    cursor: str | None, listing: str, scope_id: uuid.UUID | None = None
) -> uuid.UUID | None:
    """The id a cursor points after; 400 for anything not issued by ``listing``."""
    if not cursor:
        return None
    try:
        raw = api_state().cursors.open(cursor, listing, scope_id)
    except InvalidCursor as exc:
        raise _invalid() from exc
    if len(raw) != 16:
        raise _invalid()
    return uuid.UUID(bytes=raw)


def encode_text_cursor(last: str, listing: str, scope_id: uuid.UUID | None = None) -> str:
    """A cursor after a text key (a patient id); sealed, so the key never shows in a URL."""
    return api_state().cursors.seal(last.encode(), listing, scope_id)


def decode_text_cursor(
    cursor: str | None, listing: str, scope_id: uuid.UUID | None = None
) -> str | None:
    """The text key a cursor points after; 400 for anything not issued by ``listing``."""
    if not cursor:
        return None
    try:
        value = api_state().cursors.open(cursor, listing, scope_id).decode()
    except (InvalidCursor, UnicodeDecodeError) as exc:
        raise _invalid() from exc
    if not value:
        raise _invalid()
    return value


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
