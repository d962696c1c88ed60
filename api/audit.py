"""Audit events for the authenticated caller: programme, key prefix and request id filled in."""

from __future__ import annotations

import uuid
from typing import Any

from flask import g

from api.hooks.request_ids import current_request_id
from api.state import db_session
from common.access.audit import record_event


def audit(
    action: str, object_type: str, object_id: uuid.UUID | str, details: dict[str, Any]
) -> None:
    """Add an event to the request's session; the view commits it with the work it records."""
    record_event(
        db_session(),
        programme_id=g.programme_id,
        key_prefix=g.key_prefix,
        action=action,
        object_type=object_type,
        object_id=object_id,
        request_id=current_request_id(),
        details=details,
    )


def audit_read(
    action: str, object_type: str, object_id: uuid.UUID | str, details: dict[str, Any]
) -> None:
    """Record a read and commit at once: a read has no other work to commit with."""
    audit(action, object_type, object_id, details)
    db_session().commit()
