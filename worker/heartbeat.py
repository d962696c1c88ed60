"""``--heartbeat-file``: a file the worker touches from a thread, for container health checks.

A solo-pool worker runs its task on the one thread that would answer ``celery inspect
ping``, so a worker busy grading (minutes, for a large task) cannot answer and would be
restarted as dead. A thread of its own keeps touching this file whatever the task thread
is doing; a health check reads how long ago it was touched.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import click
from celery import bootsteps

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 10.0

HEARTBEAT_OPTION = click.Option(
    ["--heartbeat-file"],
    default=None,
    help=f"Touch this file every {HEARTBEAT_INTERVAL_S:g}s from a thread of its own, busy or "
    "not, for a container health check to read its age.",
)


class Heartbeat:
    """A daemon thread touching ``path`` every ``interval_s`` seconds until stopped."""

    def __init__(self, path: Path, interval_s: float = HEARTBEAT_INTERVAL_S) -> None:
        self.path = path
        self.interval_s = interval_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._failing = False

    def start(self) -> None:
        """Touch the file now (an unwritable path fails here, at startup), then keep on."""
        self.path.touch()
        self._thread.start()

    def stop(self) -> None:
        """Stop touching; the file ages until a health check fails."""
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval_s):
            try:
                self.path.touch()
            except OSError as error:
                if not self._failing:  # once per outage, not every beat
                    log.warning("cannot touch heartbeat file %s: %s", self.path, error)
                self._failing = True
            else:
                self._failing = False


class HeartbeatStep(bootsteps.StartStopStep):
    """Runs a :class:`Heartbeat` for the worker's lifetime when ``--heartbeat-file`` is given.

    It starts with the worker, before the consumer (and so before the model loads): it
    tells a health check that the process is alive, not that it has finished loading.
    """

    def __init__(self, parent: Any, heartbeat_file: str | None = None, **options: Any) -> None:
        super().__init__(parent, **options)
        self.path = Path(heartbeat_file) if heartbeat_file else None

    def include_if(self, parent: Any) -> bool:
        """Only with ``--heartbeat-file``."""
        return self.path is not None

    def create(self, parent: Any) -> Heartbeat:
        """The heartbeat that :meth:`start` and :meth:`stop` drive."""
        assert self.path is not None
        return Heartbeat(self.path)
