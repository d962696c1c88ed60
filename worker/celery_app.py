"""The worker's Celery app: built from the shared settings, model loaded once per process.

Start it with ``celery -A worker worker --pool=solo`` (one process per accelerator) or
``retinaq worker``. With the prefork pool the model loads in each child after the fork,
never in the parent. A worker that cannot load its model or reach a migrated database
stops at once rather than accepting tasks it cannot grade. Every line it logs, Celery's
own included, comes out in ``RETINAQ_LOG_FORMAT`` and names the task in hand
(:mod:`worker.log_context`).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.exceptions import WorkerShutdown
from celery.signals import setup_logging, worker_process_init, worker_ready

from common.logs import add_context, configure_logging
from common.queue import make_celery
from common.settings import get_settings
from worker.heartbeat import HEARTBEAT_OPTION, HeartbeatStep
from worker.log_context import task_log_context

log = logging.getLogger(__name__)

# Before Celery starts: what it warns about on the way up (running as root) is logged in
# our format too. A host that set up logging already (a test runner) keeps its own.
if not logging.getLogger().handlers:
    configure_logging(get_settings().log_format, get_settings().log_level)
    logging.captureWarnings(True)

app = make_celery(get_settings(), name="retinaq-worker")
app.conf.imports = ("worker.tasks", "worker.model_switch")  # model_switch: the active model
app.user_options["worker"].add(HEARTBEAT_OPTION)
app.steps["worker"].add(HeartbeatStep)


@setup_logging.connect
def _setup_logging(loglevel: int | str | None = None, **_: Any) -> None:
    """Our format (``RETINAQ_LOG_FORMAT``) for every line, Celery's own included.

    Connecting this signal stops Celery from installing its handlers on the root logger;
    ``--loglevel`` still sets the level.
    """
    settings = get_settings()
    configure_logging(settings.log_format, loglevel or settings.log_level)
    add_context(task_log_context)


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
