"""``Server-Timing``: how long the application took over a request, on every response.

A client's latency adds the proxy, the network and, on a busy host, the wait for a CPU;
this header (W3C Server Timing, shown by browsers' developer tools) says how much was
ours: ``app`` is the wall-clock time from the first hook to the response object, ``cpu``
the CPU time this request's thread spent meanwhile. ``retinaq bench`` reads both to
report a status poll's own cost apart from its queueing. A streamed body (the CSV export)
is timed to its first byte.
"""

from __future__ import annotations

import time

from flask import Response, g

SERVER_TIMING_HEADER = "Server-Timing"


def start_clock() -> None:
    """``before_request``, registered first: the request's clocks start here."""
    g.server_timing_started = (time.perf_counter(), time.thread_time())


def add_server_timing(response: Response) -> Response:
    """``after_request``: the application's wall-clock and CPU milliseconds."""
    started = g.get("server_timing_started")
    if started is not None:
        wall_ms = (time.perf_counter() - started[0]) * 1000
        cpu_ms = (time.thread_time() - started[1]) * 1000
        response.headers[SERVER_TIMING_HEADER] = f"app;dur={wall_ms:.2f}, cpu;dur={cpu_ms:.2f}"
    return response
