"""The worker's Celery app: built from the shared settings, model loaded once per process.

Start it with ``celery -A worker worker --pool=solo`` (one process per accelerator) or
``retinaq worker``. With the prefork pool the model loads in each child after the fork,
never in the parent.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.signals import worker_process_init, worker_ready

from common.queue import make_celery
from common.settings import get_settings

log = logging.getLogger(__name__)

app = make_celery(get_settings(), name="retinaq-worker")
app.conf.imports = ("worker.tasks",)


@worker_process_init.connect
def _load_in_child(**_: Any) -> None:
    """Prefork: each child builds its own runtime (database engine and model)."""
    from worker.runtime import get_runtime

    get_runtime()


@worker_ready.connect
def _load_in_process(sender: Any = None, **_: Any) -> None:
    """Solo or threads pool: tasks run in this process, so load here before the first task."""
    if sender is not None and isinstance(getattr(sender, "pool", None), PreforkPool):
        return
    from worker.runtime import get_runtime

    get_runtime()
