"""Every response says how long the application took over it (``Server-Timing``)."""

from __future__ import annotations

import re
from collections.abc import Callable

from flask.testing import FlaskClient

TIMING = re.compile(r"app;dur=(\d+\.\d\d), cpu;dur=(\d+\.\d\d)")


def _timings(header: str | None) -> tuple[float, float]:
    assert header is not None
    match = TIMING.fullmatch(header)
    assert match, header
    return float(match[1]), float(match[2])


def test_a_status_poll_carries_its_wall_clock_and_cpu_time(
    client: FlaskClient, submit: Callable, fundus_jpeg: Callable[..., bytes], auth: dict
) -> None:
    batch, _ = submit([(fundus_jpeg(seed=1), "a.jpg")])
    response = client.get(batch["links"]["self"], headers=auth)
    assert response.status_code == 200
    wall_ms, cpu_ms = _timings(response.headers.get("Server-Timing"))
    assert 0 < wall_ms < 10_000 and 0 <= cpu_ms < 10_000


def test_refusals_and_errors_are_timed_too(client: FlaskClient, auth: dict) -> None:
    for response in (
        client.get("/v1/batches"),  # no key: 401
        client.get("/v1/batches/not-a-uuid", headers=auth),  # 404
        client.get("/no-such-route"),
    ):
        assert response.status_code in (401, 404), response.status_code
        _timings(response.headers.get("Server-Timing"))
