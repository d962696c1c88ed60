"""Fairness: a small batch from one programme behind another programme's backlog.

The same small batch is timed from its first upload byte to its last result twice with
one warm worker: on an idle system, then submitted just after another programme's whole
backlog (the run's ``--n`` images) was uploaded. Claims take programmes in turn
(:mod:`common.lifecycle.turns`), so the second should cost about one micro-batch more than
the first, not the backlog; the backlog's images still pending when the small batch
finished show it was not simply drained first. The backlog is then cancelled, so the
stages after this one start on an empty queue.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

import httpx

from cli.bench.report import Fairness
from cli.bench.servers import Servers, wait_for

SMALL_BATCH = 20
FINISH_TIMEOUT_S = 600


def measure_fairness(servers: Servers, backlog: list[Path], small: list[Path]) -> Fairness:
    """The small batch's completion time idle and behind ``backlog``, with one worker."""
    small = small[:SMALL_BATCH]
    with ExitStack() as stack:
        worker = servers.worker(stack, "fairness")
        servers.wait_worker_ready(worker, "fairness")
        idle_s = _completion_s(servers, small)
        headers, _ = servers.new_key("backlog")
        backlog_id, _ = servers.upload(headers, backlog)
        behind_s = _completion_s(servers, small)
        left = servers.pending(backlog_id)
        with httpx.Client(base_url=servers.api_url, headers=headers, timeout=60) as http:
            http.delete(f"/v1/batches/{backlog_id}").raise_for_status()
    return Fairness.measured(len(small), len(backlog), idle_s, behind_s, left)


def _completion_s(servers: Servers, files: list[Path]) -> float:
    """First upload byte to last result of ``files``, sent by a programme of their own."""
    started = time.perf_counter()
    batch_id, _ = servers.upload(servers.new_key("small")[0], files)
    wait_for(lambda: servers.pending(batch_id) == 0, FINISH_TIMEOUT_S, "the small batch", 0.02)
    return time.perf_counter() - started
