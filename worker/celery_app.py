"""The worker's Celery app: built from the shared settings, model loaded once per process.

Start it with ``celery -A worker worker --pool=solo`` (one process per accelerator) or
``retinaq worker``. With the prefork pool the model loads in each child after the fork,
never in the parent. A worker that cannot load its model or reach a migrated database
stops at once rather than accepting tasks it cannot grade.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.exceptions import WorkerShutdown
from celery.signals import worker_process_init, worker_ready

from common.queue import make_celery
from common.settings import get_settings
from worker.heartbeat import HEARTBEAT_OPTION, HeartbeatStep

log = logging.getLogger(__name__)

app = make_celery(get_settings(), name="retinaq-worker")
app.conf.imports = ("worker.tasks", "worker.model_switch")  # model_switch: the active model
app.user_options["worker"].add(HEARTBEAT_OPTION)
app.steps["worker"].add(HeartbeatStep)


def _load_runtime_or_stop() -> None:
    from worker.runtime import get_runtime

    try:
        get_runtime()
    except Exception as error:
        log.critical("cannot start grading: %s", error)
        raise WorkerShutdown(1) from error


@worker_process_init.connect
def _load_in_child(**_: Any) -> None:
    """Prefork: each child builds its own runtime (database engine and model)."""
    _load_runtime_or_stop()


@worker_ready.connect
def _load_in_process(sender: Any = None, **_: Any) -> None:
    """Solo or threads pool: tasks run in this process, so load here before the first task."""
    if sender is not None and isinstance(getattr(sender, "pool", None), PreforkPool):
        return
    _load_runtime_or_stop()
