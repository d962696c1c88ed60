"""The audit log: who did what to which object, written in the same transaction as the work.

Rows are append-only (a PostgreSQL trigger refuses UPDATE and DELETE). Details hold counts
and states only: never an API key, image bytes or a patient identifier.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from common.db.tables import AuditEvent, utcnow

# Detail names that would carry secrets or personal data; refused so a careless caller fails
# loudly in tests rather than quietly filling the audit log with them.
FORBIDDEN_DETAILS = frozenset({"patient_id", "api_key", "key", "secret", "authorization"})


def record_event(
    session: Session,
    *,
    programme_id: uuid.UUID | None,
    key_prefix: str | None,
    action: str,
    object_type: str,
    object_id: uuid.UUID | str | None,
    request_id: str | None,
    details: dict[str, Any],
) -> AuditEvent:
    """Add one audit event to ``session``; the caller commits it together with the work."""
    refused = sorted(FORBIDDEN_DETAILS.intersection(name.lower() for name in details))
    if refused:
        raise ValueError(f"audit details must not contain {', '.join(refused)}")
    event = AuditEvent(
        programme_id=programme_id,
        key_prefix=key_prefix,
        action=action,
        object_type=object_type,
        object_id=None if object_id is None else str(object_id),
        request_id=request_id,
        details=details,
        created_at=utcnow(),
    )
    session.add(event)
    return event
