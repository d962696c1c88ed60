"""gunicorn settings for ``retinaq api`` (``gunicorn -c python:api.serving.gunicorn_conf``).

Threads serve requests; a connection gets one only once its request head is complete
(``api.serving.head_first.HeadFirstWorker``), so slow clients cannot tie them up, and request bodies
(uploads) never get every thread: ``RETINAQ_API_RESERVED_THREADS`` of each process's
``threads`` (2) are kept for requests without one, and one API key may hold at most
``RETINAQ_API_KEY_UPLOAD_SHARE`` (half) of the rest (``api.serving.admission``). The command line
adds the bind address and the numbers of processes and threads. ``retinaq api`` also sets
``PROMETHEUS_MULTIPROC_DIR``, the folder where the processes keep the metrics ``/metrics``
adds up (``api.metrics``); the hooks below tidy it.
"""

from __future__ import annotations

import os

from gunicorn.arbiter import Arbiter
from gunicorn.workers.base import Worker

from api.metrics import MULTIPROC_DIR_VARIABLE

worker_class = "api.serving.head_first.HeadFirstWorker"
threads = 8
# The heartbeat comes from each worker's event loop, which keeps running while threads
# serve, so a long upload never looks like a hung worker: no need for a long timeout.
timeout = 30
graceful_timeout = 30
keepalive = 5  # seconds a kept-alive connection may stay idle between requests
# The head as a whole may be 64 KiB (api.serving.head_first.MAX_HEAD_BYTES); within it, the request
# line 4094 bytes (414), a header field 8190 bytes and 100 fields (431), as nginx's
# large_client_header_buffers (8k) in front would allow anyway.
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190
# gunicorn itself trusts no peer's X-Forwarded-*; the app does, for RETINAQ_PROXY_HOPS
# proxies (ProxyFix), so there is one place that decides.
forwarded_allow_ips = ""
accesslog = "-"
# Control and non-ASCII characters (a decoded %0a in a path) are escaped: one request, one line.
logger_class = "api.serving.access_log.AccessLogger"
# The path without its query string: keys sent as ?api_key= and cursors never reach a log.
access_log_format = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(M)sms %({x-request-id}o)s'
# No runtime control socket: one default path per user would be shared by every server on
# the host (tests start several), and the supervisor, not gunicornc, manages processes.
control_socket_disable = True


def on_starting(server: Arbiter) -> None:
    """Say when /metrics would add up one process's counts only (gunicorn run by hand)."""
    if server.log and not os.environ.get(MULTIPROC_DIR_VARIABLE) and server.cfg.workers > 1:
        server.log.warning(
            "%s is not set: each of the %d processes answers /metrics with its own counts; "
            "`retinaq api` sets it (docs/operations.md, Metrics)",
            MULTIPROC_DIR_VARIABLE,
            server.cfg.workers,
        )


def child_exit(server: Arbiter, worker: Worker) -> None:
    """A process ended: prometheus_client's multiprocess bookkeeping drops its live gauges."""
    if os.environ.get(MULTIPROC_DIR_VARIABLE):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
