"""Which requests may start reading a body now: threads kept for everything else.

A request body is read on a thread, and a client can keep one held for as long as it sends
a byte now and then (or for the body idle timeout if it goes silent). Left alone, a handful
of stalled uploads hold every thread of a process and ``/healthz`` and every status poll
wait behind them. So each process admits at most ``threads - reserved`` requests with a
body at once (at least one), and one credential at most a share of those; requests without
a body (health probes, status polls) always find one of the reserved threads. The decision
is taken from the request head alone, in the worker's event loop, before any thread is
given.

A credential is the ``Authorization`` header's value, kept only as a digest: the raw key
never sits in this process's memory longer than the request that carried it.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass

_DIGEST_BYTES = 16


@dataclass(frozen=True)
class BodyRequest:
    """A request whose head announces a body: who sends it (a digest), for the caps."""

    credential: bytes


def credential_digest(authorization: bytes) -> bytes:
    """A short one-way digest of a credential, so the raw key is never stored."""
    return hashlib.sha256(authorization).digest()[:_DIGEST_BYTES]


def body_request(head: bytes) -> BodyRequest | None:
    """The body this complete head announces, or None when it has none (or is malformed).

    Only the admission decision rests on this scan; gunicorn's parser still validates the
    head on the thread, so a head it will refuse simply counts as having no body here.
    """
    end = head.find(b"\r\n\r\n")
    if end < 0:
        return None
    has_body = False
    authorization = b""
    for line in head[:end].split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            continue
        name = name.strip().lower()
        value = value.strip()
        if name == b"transfer-encoding":
            has_body = True
        elif name == b"content-length":
            has_body = has_body or (value.isdigit() and int(value) > 0)
        elif name == b"authorization":
            authorization = value
    return BodyRequest(credential_digest(authorization)) if has_body else None


@dataclass
class BodySlots:
    """Counts of bodies being read in one process: in all, and per credential.

    Used from the worker's event loop only, so it needs no lock.
    """

    total: int
    per_credential: int

    def __post_init__(self) -> None:
        self._held: Counter[bytes] = Counter()

    @classmethod
    def for_threads(cls, threads: int, reserved: int, key_share: float) -> BodySlots:
        """Slots for a process of ``threads`` threads, ``reserved`` of them kept body-free."""
        total = max(1, threads - reserved)
        return cls(total=total, per_credential=max(1, int(total * key_share)))

    @property
    def in_use(self) -> int:
        """Bodies being read now."""
        return sum(self._held.values())

    def acquire(self, request: BodyRequest) -> bool:
        """Take a slot for this body, or say no (the process or the credential is at its cap)."""
        if self.in_use >= self.total or self._held[request.credential] >= self.per_credential:
            return False
        self._held[request.credential] += 1
        return True

    def release(self, request: BodyRequest) -> None:
        """Give back the slot a finished request held."""
        self._held[request.credential] -= 1
        if self._held[request.credential] <= 0:
            del self._held[request.credential]
