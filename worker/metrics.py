"""Prometheus metrics of a worker process, and the small HTTP server that serves them.

The server (``RETINAQ_METRICS_PORT``; off when 0) runs on a thread of its own, started with
the worker by :class:`worker.heartbeat.HeartbeatStep`, so a solo-pool worker busy with a
long task still answers: ``/metrics`` for Prometheus, ``/healthz`` for a liveness probe
(200 while the heartbeat thread beats, 503 once it has missed a minute).

Counts are of what the worker *recorded*, observed in :mod:`worker.grading.pipeline` after
each micro-batch's write, with bounded labels: the programme's id (programmes are few), the
outcome, and a reason from a fixed vocabulary (the quality check's
:data:`common.screening.quality.REASONS`, or a decode error code). Stage times are the
pipeline's own (``GradingReport.timings_ms``), observed per micro-batch, not timed again.

The instruments live in one registry per process: a grading worker is one process per
accelerator (solo pool). With the prefork pool the tasks run in children this server
cannot see, so it serves the heartbeat only and says so at start.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.exposition import choose_encoder

if TYPE_CHECKING:
    from common.imaging.decode import ImageDecodeError
    from common.lifecycle.claims import Claim
    from common.screening.outcome import ImageOutcome
    from worker.grading.recording import Recorded

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry()
# Resident memory, CPU seconds and open files of this process (what the pixel budget bounds).
ProcessCollector(registry=REGISTRY)
# The pipeline's stages, as GradingReport.timings_ms names them.
STAGES = ("claim", "stage", "decode_wait", "infer", "write")
# When a write recorded fewer images than it was given (claims superseded meanwhile), which
# ones it recorded is not known here: the totals stay exact, their labels say so.
UNATTRIBUTED = "unattributed"
LIVENESS_MAX_AGE_S = 60.0

IMAGES = Counter(
    "retinaq_worker_images",
    "Images this worker recorded, by programme, outcome (graded, ungradable, failed) and "
    "reason (ungradable: the first quality reason; failed: the error code; graded: empty).",
    ["programme_id", "outcome", "reason"],
    registry=REGISTRY,
)
UNGRADABLE_REASONS = Counter(
    "retinaq_worker_ungradable_reasons",
    "Reasons given for images recorded ungradable; an image with two reasons counts in both.",
    ["reason"],
    registry=REGISTRY,
)
FENCED_OUT = Counter(
    "retinaq_worker_fenced_out_images",
    "Claimed images whose result another delivery recorded first (nothing written here).",
    registry=REGISTRY,
)
MICRO_BATCH = Histogram(
    "retinaq_worker_micro_batch_images",
    "Images claimed per micro-batch.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
    registry=REGISTRY,
)
STAGE_SECONDS = Histogram(
    "retinaq_worker_stage_seconds",
    "Seconds a micro-batch spent in each pipeline stage (claim, stage, decode_wait, infer, write).",
    ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
MODEL = Info(
    "retinaq_worker_model",
    "The model this worker serves: name, version, SHA-256 of its file, and device.",
    registry=REGISTRY,
)
HEARTBEAT_AGE = Gauge(
    "retinaq_worker_heartbeat_age_seconds",
    "Seconds since the worker's heartbeat thread last beat (a busy worker still beats).",
    registry=REGISTRY,
)


def record_model(name: str, version: str, sha256: str, devices: Sequence[str]) -> None:
    """Say which model this process loaded, and where it runs (the first GPU, else CPU)."""
    # TensorFlow names devices "/physical_device:GPU:0"; the label keeps "GPU:0".
    gpus = [device.rsplit("physical_device:", 1)[-1] for device in devices if "GPU" in device]
    device = gpus[0] if gpus else "CPU"
    MODEL.info({"name": name, "version": version, "sha256": sha256, "device": device})


def watch_heartbeat(age_s: Callable[[], float]) -> None:
    """Report the heartbeat's age, read at each scrape."""
    HEARTBEAT_AGE.set_function(age_s)


def observe_recorded(
    predictions: Sequence[tuple[Claim, ImageOutcome]],
    failures: Sequence[tuple[Claim, ImageDecodeError]],
    recorded: Recorded,
) -> None:
    """Count one write's outcomes, by programme and reason when the write took them all."""
    ungradable = [(c, o) for c, o in predictions if not o.gradable]
    graded = [(c, o) for c, o in predictions if o.gradable]
    _count("graded", [(c.programme_id, "") for c, _ in graded], recorded.graded)
    _count(
        "ungradable",
        [(c.programme_id, o.reasons[0] if o.reasons else "") for c, o in ungradable],
        recorded.ungradable,
    )
    _count("failed", [(c.programme_id, e.code) for c, e in failures], recorded.failed)
    if recorded.ungradable == len(ungradable):
        for _, outcome in ungradable:
            for reason in outcome.reasons:
                UNGRADABLE_REASONS.labels(reason).inc()
    written = recorded.graded + recorded.ungradable + recorded.failed
    FENCED_OUT.inc(len(predictions) + len(failures) - written)


def _count(outcome: str, given: list[tuple[uuid.UUID, str]], recorded: int) -> None:
    if recorded == len(given):
        for programme_id, reason in given:
            IMAGES.labels(str(programme_id), outcome, reason).inc()
    elif recorded:
        IMAGES.labels(UNATTRIBUTED, outcome, UNATTRIBUTED).inc(recorded)


class StageClock:
    """Turns a task's running stage totals into one observation per stage per micro-batch."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}

    def observe(self, timings_ms: Mapping[str, float], claimed: int) -> None:
        """Observe what each stage took since the last call, and the micro-batch's size."""
        MICRO_BATCH.observe(claimed)
        for stage in STAGES:
            total = timings_ms.get(stage, 0.0)
            STAGE_SECONDS.labels(stage).observe(max(0.0, total - self._seen.get(stage, 0.0)) / 1000)
            self._seen[stage] = total


class MetricsServer:
    """``/metrics`` and ``/healthz`` on a daemon thread of their own."""

    def __init__(self, host: str, port: int, heartbeat_age_s: Callable[[], float]) -> None:
        handler = _handler(heartbeat_age_s)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )

    @property
    def port(self) -> int:
        """The port it listens on (the one asked for, or the one the OS chose for 0)."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Serve from now on."""
        self._thread.start()
        log.info("metrics and liveness on port %d (/metrics, /healthz)", self.port)

    def stop(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()


def _handler(heartbeat_age_s: Callable[[], float]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._send(200, content_type, encoder(REGISTRY))
            elif path == "/healthz":
                age = heartbeat_age_s()
                alive = age <= LIVENESS_MAX_AGE_S
                body = {"status": "ok" if alive else "stalled", "heartbeat_age_s": round(age, 1)}
                self._send(200 if alive else 503, "application/json", json.dumps(body).encode())
            else:
                self._send(404, "application/json", b'{"error": {"code": "not_found"}}')

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            """Scrapes every 15 s are not worth a log line each."""

    return Handler
