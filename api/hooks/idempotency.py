"""``Idempotency-Key`` on every POST under ``/v1``: a retried request is answered, not redone.

A client may send ``Idempotency-Key: <1-255 printable ASCII characters, no comma>`` with
any POST.
Keys belong to the authenticated programme, so two programmes never see each other's.

* The first request reserves the key (a row with no status) in a transaction of its own,
  committed before the view does any work. The unique ``(programme_id, key)`` constraint
  makes a concurrent duplicate lose that race.
* When the request succeeds (status below 400) its status, JSON body and headers are stored;
  when it fails (4xx or 5xx) the reservation is deleted so the client can simply retry.
  Every ``/v1`` response is JSON; one that is not would be released the same way, never
  stored.
* For ``Settings.idempotency_ttl_s`` seconds after the first request (default 24 hours) a
  request with the same key is answered from the row: the stored response, marked
  ``Idempotent-Replayed: true``, when the request is the same; 422
  ``idempotency_key_reused`` when it differs; 409 ``idempotency_key_in_progress`` (with
  ``Retry-After``) while the first is still running. After that an expired row is ignored
  and replaced by a new reservation. A reservation still in progress after
  ``Settings.idempotency_abandoned_after_s`` is taken to have died with its process and
  is replaced too.

Two requests are the same when their fingerprints match: SHA-256 over the method, the path,
the query string and the body. A ``multipart/form-data`` (or URL-encoded) body counts as its
form fields (name and value, in order) plus each file part's field name, filename and SHA-256
(in order), the hashes coming from the spools the parts were streamed into, so the body is
never held in memory and a new multipart boundary on a retry changes nothing. Any other body
is hashed whole, together with its media type.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import timedelta
from typing import Any

from flask import Request, Response, g, jsonify, request
from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.exc import IntegrityError

from api.errors import ApiError
from api.state import api_state
from common.db.tables import IdempotencyKey, utcnow
from common.storage.files import HashingSpool

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
FORM_MEDIA_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
# No comma: a header sent twice reaches the application joined by one ("k1,k2"), and two
# keys must not pass for a third.
_VALID_KEY = re.compile(r"[\x20-\x2b\x2d-\x7e]{1,255}")
# Headers that describe one exchange rather than the resource; a replay gets fresh ones.
_PER_REQUEST_HEADERS = frozenset({"content-length", "date", "server", "set-cookie", "x-request-id"})


def request_fingerprint(req: Request) -> str:
    """SHA-256 identifying a request by method, path, query and body (see the module doc)."""
    body: dict[str, Any]
    if req.mimetype in FORM_MEDIA_TYPES:
        body = {
            "fields": [[name, value] for name, value in req.form.items(multi=True)],
            "files": [
                [name, part.filename or "", _spooled_sha256(part.stream)]
                for name, part in req.files.items(multi=True)
            ],
        }
    else:
        body = {
            "media_type": req.mimetype,
            "sha256": hashlib.sha256(req.get_data(cache=True)).hexdigest(),
        }
    document = {
        "method": req.method,
        "path": req.path,
        "query": req.query_string.decode("latin-1"),
        "body": body,
    }
    return hashlib.sha256(json.dumps(document, separators=(",", ":")).encode()).hexdigest()


def _spooled_sha256(stream: Any) -> str:
    if not isinstance(stream, HashingSpool):
        raise TypeError("file parts must be spooled by StreamingRequest")
    return stream.sha256


def _idempotency_key() -> str | None:
    if IDEMPOTENCY_HEADER not in request.headers:
        return None
    key = request.headers[IDEMPOTENCY_HEADER]
    if not _VALID_KEY.fullmatch(key):
        raise ApiError(
            400,
            "invalid_idempotency_key",
            f"send one {IDEMPOTENCY_HEADER} of 1 to 255 printable ASCII characters, "
            "without a comma",
        )
    return key


def begin_idempotent_request() -> Response | None:
    """``before_request`` (after authentication): replay, refuse, or reserve the key."""
    if request.method != "POST":
        return None
    key = _idempotency_key()
    if key is None:
        return None
    fingerprint = request_fingerprint(request)
    state = api_state()
    programme_id: uuid.UUID = g.programme_id
    now = utcnow()
    mine = (IdempotencyKey.programme_id == programme_id, IdempotencyKey.key == key)
    with state.sessions() as session:
        abandoned = now - timedelta(seconds=state.settings.idempotency_abandoned_after_s)
        session.execute(
            delete(IdempotencyKey).where(
                *mine,
                or_(
                    IdempotencyKey.expires_at <= now,
                    # A reservation whose request died with its process is not held forever.
                    and_(
                        IdempotencyKey.status_code.is_(None), IdempotencyKey.created_at < abandoned
                    ),
                ),
            )
        )
        existing = session.scalar(select(IdempotencyKey).where(*mine))
        if existing is not None:
            session.commit()
            return _answer_from(existing, fingerprint)
        reservation = IdempotencyKey(
            programme_id=programme_id,
            key=key,
            request_fingerprint=fingerprint,
            status_code=None,
            created_at=now,
            expires_at=now + timedelta(seconds=state.settings.idempotency_ttl_s),
        )
        session.add(reservation)
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            winner = session.scalar(select(IdempotencyKey).where(*mine))
            if winner is None:
                raise _in_progress() from None
            return _answer_from(winner, fingerprint)
    g.idempotency_reservation = reservation.id
    return None


def _answer_from(row: IdempotencyKey, fingerprint: str) -> Response:
    if row.request_fingerprint != fingerprint:
        raise ApiError(
            422,
            "idempotency_key_reused",
            f"this {IDEMPOTENCY_HEADER} was used for a different request; use a new key",
        )
    if row.status_code is None:
        raise _in_progress()
    response = jsonify(row.response_body)
    response.status_code = row.status_code
    for name, value in (row.response_headers or {}).items():
        response.headers[name] = value
    response.headers[REPLAYED_HEADER] = "true"
    return response


def _in_progress() -> ApiError:
    return ApiError(
        409,
        "idempotency_key_in_progress",
        f"a request with this {IDEMPOTENCY_HEADER} is still being processed; retry later",
        {"Retry-After": str(api_state().settings.status_retry_after_s)},
    )


def finish_idempotent_request(response: Response) -> Response:
    """``after_request``: store a success for replay, or release the key after a failure."""
    reservation_id: uuid.UUID | None = g.pop("idempotency_reservation", None)
    if reservation_id is None:
        return response
    with api_state().sessions.begin() as session:
        if response.status_code >= 400 or not response.is_json:
            session.execute(delete(IdempotencyKey).where(IdempotencyKey.id == reservation_id))
        else:
            session.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.id == reservation_id)
                .values(
                    status_code=response.status_code,
                    response_body=response.get_json(),
                    response_headers={
                        name: value
                        for name, value in response.headers.items()
                        if name.lower() not in _PER_REQUEST_HEADERS
                    },
                )
            )
    return response
