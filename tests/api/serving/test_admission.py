"""Which request heads announce a body, and how the body slots of a process are shared."""

from __future__ import annotations

import pytest

from api.serving.admission import BodyRequest, BodySlots, body_request, credential_digest


@pytest.mark.parametrize(
    ("head", "has_body"),
    [
        (b"POST /v1/batches HTTP/1.1\r\nContent-Length: 10\r\n\r\n", True),
        (b"POST /v1/batches HTTP/1.1\r\ncontent-length:10\r\n\r\nbody bytes", True),
        (b"POST /v1/batches HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", True),
        (b"POST /v1/batches/x/close HTTP/1.1\r\nContent-Length: 0\r\n\r\n", False),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", False),
        (b"POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n", False),  # the parser refuses it
        (b"POST / HTTP/1.1\r\nContent-Length: 10\r\n", False),  # not a complete head
    ],
)
def test_a_body_is_what_the_head_announces(head: bytes, has_body: bool) -> None:
    assert (body_request(head) is not None) is has_body


def test_the_credential_is_kept_as_a_digest_of_the_authorization_value() -> None:
    head = b"POST / HTTP/1.1\r\nAuthorization: Bearer rq_secret\r\nContent-Length: 1\r\n\r\n"
    request = body_request(head)
    assert request == BodyRequest(credential_digest(b"Bearer rq_secret"))
    assert b"rq_secret" not in request.credential
    anonymous = body_request(b"POST / HTTP/1.1\r\nContent-Length: 1\r\n\r\n")
    assert anonymous is not None and anonymous.credential != request.credential


@pytest.mark.parametrize(
    ("threads", "reserved", "share", "total", "per_key"),
    [(8, 2, 0.5, 6, 3), (1, 2, 0.5, 1, 1), (4, 2, 0.5, 2, 1), (16, 2, 1.0, 14, 14)],
)
def test_slots_keep_reserved_threads_and_at_least_one_of_each(
    threads: int, reserved: int, share: float, total: int, per_key: int
) -> None:
    slots = BodySlots.for_threads(threads, reserved, share)
    assert (slots.total, slots.per_credential) == (total, per_key)


def test_one_key_gets_its_share_and_the_process_its_total() -> None:
    slots = BodySlots(total=3, per_credential=2)
    a, b, c = (BodyRequest(bytes([n]) * 16) for n in range(3))
    assert [slots.acquire(a) for _ in range(3)] == [True, True, False]
    assert slots.acquire(b)
    assert not slots.acquire(c)  # the process is full
    slots.release(a)
    assert slots.acquire(c)
    assert slots.in_use == 3
