"""Bearer-key authentication for every ``/v1`` route."""

from __future__ import annotations

import uuid

from flask import g, request

from api.access import ProgrammeScope
from api.errors import ApiError
from api.state import db_session
from common.access.apikeys import programme_for_key


def authenticate() -> None:
    """``before_request`` hook: resolve the key to its programme and prefix, or answer 401."""
    header = request.headers.get("Authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise ApiError(
            401,
            "unauthorized",
            "send 'Authorization: Bearer <api key>'",
            {"WWW-Authenticate": 'Bearer realm="retinaq"'},
        )
    holder = programme_for_key(db_session(), secret.strip())
    if holder is None:
        raise ApiError(
            401,
            "invalid_api_key",
            "the API key is unknown, revoked or expired",
            {"WWW-Authenticate": 'Bearer realm="retinaq", error="invalid_token"'},
        )
    g.programme_id = holder.programme_id
    g.key_prefix = holder.prefix


def scope() -> ProgrammeScope:
    """Data access limited to the authenticated programme."""
    programme_id: uuid.UUID = g.programme_id
    return ProgrammeScope(db_session(), programme_id)
