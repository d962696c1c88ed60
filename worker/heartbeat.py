"""A worker's liveness: a heartbeat thread, the file it touches (``--heartbeat-file``) for
container health checks, and the metrics server (``RETINAQ_METRICS_PORT``) that reports it.

A solo-pool worker runs its task on the one thread that would answer ``celery inspect
ping``, so a worker busy grading (minutes, for a large task) cannot answer and would be
restarted as dead. A thread of its own keeps beating whatever the task thread is doing:
it touches the file, whose age a health check reads, and notes the time, whose age
``/healthz`` and ``retinaq_worker_heartbeat_age_seconds`` report (:mod:`worker.metrics`).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import click
from celery import bootsteps
from celery.concurrency.prefork import TaskPool as PreforkPool

from common.settings import get_settings
from worker.metrics import MetricsServer, watch_heartbeat

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 10.0

HEARTBEAT_OPTION = click.Option(
    ["--heartbeat-file"],
    default=None,
    help=f"Touch this file every {HEARTBEAT_INTERVAL_S:g}s from a thread of its own, busy or "
    "not, for a container health check to read its age.",
)


class Heartbeat:
    """A daemon thread beating every ``interval_s`` seconds until stopped, touching ``path``
    (when given) at each beat; a beat whose touch fails does not count."""

    def __init__(self, path: Path | None, interval_s: float = HEARTBEAT_INTERVAL_S) -> None:
        self.path = path
        self.interval_s = interval_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._failing = False
        self._last_beat = time.monotonic()

    def start(self) -> None:
        """Touch the file now (an unwritable path fails here, at startup), then keep on."""
        self._beat()
        self._thread.start()

    def age_s(self) -> float:
        """Seconds since the last beat."""
        return time.monotonic() - self._last_beat

    def _beat(self) -> None:
        if self.path is not None:
            self.path.touch()
        self._last_beat = time.monotonic()

    def stop(self) -> None:
        """Stop touching; the file ages until a health check fails."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval_s):
            try:
                self._beat()
            except OSError as error:
                if not self._failing:  # once per outage, not every beat
                    log.warning("cannot touch heartbeat file %s: %s", self.path, error)
                self._failing = True
            else:
                self._failing = False


class HeartbeatStep(bootsteps.StartStopStep):
    """Runs a :class:`Heartbeat` for the worker's lifetime, with ``--heartbeat-file`` or
    ``RETINAQ_METRICS_PORT``, and the metrics server beside it when the port is set.

    It starts with the worker, before the consumer (and so before the model loads): it
    tells a health check that the process is alive, not that it has finished loading.
    """

    def __init__(self, parent: Any, heartbeat_file: str | None = None, **options: Any) -> None:
        super().__init__(parent, **options)
        self.path = Path(heartbeat_file) if heartbeat_file else None
        settings = get_settings()
        self.metrics_host = settings.metrics_host
        self.metrics_port = settings.metrics_port
        self.server: MetricsServer | None = None

    def include_if(self, parent: Any) -> bool:
        """Only with ``--heartbeat-file`` or a metrics port."""
        return self.path is not None or self.metrics_port > 0

    def create(self, parent: Any) -> Heartbeat:
        """The heartbeat that :meth:`start` and :meth:`stop` drive."""
        return Heartbeat(self.path)

    def start(self, parent: Any) -> None:
        """Beat, then serve metrics (a port in use stops the worker here, at start)."""
        super().start(parent)
        if self.metrics_port <= 0:
            return
        heartbeat: Heartbeat = self.obj
        watch_heartbeat(heartbeat.age_s)
        pool = getattr(parent, "pool_cls", None)
        if isinstance(pool, type) and issubclass(pool, PreforkPool):
            log.warning(
                "metrics: with the prefork pool tasks run in child processes whose counts this "
                "server cannot see; it reports the heartbeat only (use --pool=solo, "
                "one process per accelerator)"
            )
        self.server = MetricsServer(self.metrics_host, self.metrics_port, heartbeat.age_s)
        self.server.start()

    def stop(self, parent: Any) -> None:
        """Stop serving, then stop beating."""
        if self.server is not None:
            self.server.stop()
            self.server = None
        super().stop(parent)
