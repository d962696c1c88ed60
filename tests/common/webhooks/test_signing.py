"""Standard Webhooks signatures against the specification's published example and its
reference verifier."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from common.webhooks.signing import new_secret, signed_headers

# The example of the specification's reference library (standard-webhooks, libraries/
# python/tests/test_webhooks.py, test_sign_function).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = '{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_published_example_signs_to_the_published_signature() -> None:
    headers = signed_headers(
        SPEC_SECRET, SPEC_ID, SPEC_BODY, datetime.fromtimestamp(SPEC_TIMESTAMP, UTC)
    )
    assert headers == {
        "webhook-id": SPEC_ID,
        "webhook-timestamp": str(SPEC_TIMESTAMP),
        "webhook-signature": SPEC_SIGNATURE,
    }


def test_a_fresh_signature_verifies_and_a_changed_body_or_secret_does_not() -> None:
    secret = new_secret()
    body = '{"type":"batch.completed"}'
    headers = signed_headers(secret, "msg_1", body)
    assert Webhook(secret).verify(body, headers) == {"type": "batch.completed"}
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace("completed", "cancelled"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


def test_a_secret_is_whsec_and_32_random_bytes_in_base64() -> None:
    first, second = new_secret(), new_secret()
    assert first.startswith("whsec_") and first != second
    assert len(base64.b64decode(first.removeprefix("whsec_"))) == 32
