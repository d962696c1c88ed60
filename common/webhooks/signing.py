"""Standard Webhooks signatures: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``.

The ``standardwebhooks`` package (the specification's reference library, no dependencies)
does the HMAC, so a receiver verifying with it, or with any conforming library, agrees with
us byte for byte. A secret is ``whsec_`` + the base64 of 32 random bytes, per the spec.
"""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


def new_secret() -> str:
    """A fresh signing secret, shown to the operator once."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def signed_headers(
    secret: str, message_id: str, body: str, now: datetime | None = None
) -> dict[str, str]:
    """The three headers of one attempt: the id repeats on every retry, the timestamp is the
    attempt's own (a receiver refuses stale ones), the signature covers both and the body."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    signature = Webhook(secret).sign(msg_id=message_id, timestamp=moment, data=body)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(moment.timestamp())),
        "webhook-signature": signature,
    }
