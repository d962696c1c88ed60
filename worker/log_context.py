"""Which task a worker's log line is about: its id, its name and the request that sent it.

Celery knows the task in hand only on the thread running it, but decoder threads and the
lease keeper log about the same images. Solo and prefork pools run one task per process at
a time, so while exactly one task runs here, every thread's lines name it; with several at
once (the threads pool) only the task's own thread can say, and other threads name none
rather than a wrong one. Each micro-batch's line also names the requests its images came
from (:mod:`worker.grading.pipeline`), since a task grades whichever images are next in turn.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from celery import Task, current_task
from celery.signals import task_postrun, task_prerun

from common.queue import REQUEST_ID_HEADER

_running: dict[str, dict[str, str]] = {}
_lock = threading.Lock()


def task_fields(task: Task) -> dict[str, str]:
    """The fields naming ``task``: its id, its name and, if it carries one, the request id."""
    request = task.request
    fields = {"task_id": str(request.id), "task": str(task.name)}
    request_id = request.get(REQUEST_ID_HEADER) or (request.headers or {}).get(REQUEST_ID_HEADER)
    if isinstance(request_id, str) and 0 < len(request_id) <= 64:
        fields["request_id"] = request_id
    return fields


def task_log_context() -> Mapping[str, str]:
    """The task in hand for a log line (:func:`common.logs.add_context`)."""
    if current_task and current_task.request.id is not None:
        return task_fields(current_task)
    with _lock:
        if len(_running) == 1:
            return next(iter(_running.values()))
    return {}


@task_prerun.connect
def _task_started(task_id: str | None = None, task: Task | None = None, **_: Any) -> None:
    if task_id is not None and task is not None:
        with _lock:
            _running[task_id] = task_fields(task)


@task_postrun.connect
def _task_ended(task_id: str | None = None, **_: Any) -> None:
    with _lock:
        _running.pop(task_id or "", None)
