"""Which task a worker's line names, from the task's thread and from its helper threads."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from celery import Celery

from worker.log_context import task_log_context

app = Celery("log-context-test", set_as_current=False)


def _from_a_thread() -> Mapping[str, str]:
    seen: dict[str, str] = {}
    helper = threading.Thread(target=lambda: seen.update(task_log_context()))
    helper.start()
    helper.join()
    return seen


@app.task(name="test.probe", bind=True)
def probe(self: Any) -> dict[str, Any]:
    """What the task's own thread and a decoder-like helper thread would log with."""
    return {"own": dict(task_log_context()), "helper": dict(_from_a_thread())}


@app.task(name="test.nested", bind=True)
def nested(self: Any) -> dict[str, Any]:
    """A second task running while the first does: helpers can no longer tell which."""
    return {"helper": dict(_from_a_thread())}


@app.task(name="test.outer", bind=True)
def outer(self: Any) -> dict[str, Any]:
    return nested.apply(headers={"request_id": "inner"}).get()


def test_a_task_s_lines_name_it_and_the_request_that_sent_it_on_every_thread() -> None:
    seen = probe.apply(headers={"request_id": "req-42"}, task_id="task-1").get()
    expected = {"task_id": "task-1", "task": "test.probe", "request_id": "req-42"}
    assert seen == {"own": expected, "helper": expected}
    assert task_log_context() == {}  # nothing once it ended


def test_a_task_sent_without_a_request_names_only_itself() -> None:
    seen = probe.apply(task_id="task-2").get()
    assert seen["own"] == {"task_id": "task-2", "task": "test.probe"}


def test_a_request_id_that_is_not_one_is_not_logged() -> None:
    seen = probe.apply(headers={"request_id": "x" * 65}, task_id="task-3").get()
    assert "request_id" not in seen["own"]


def test_helper_threads_name_no_task_while_two_run_rather_than_a_wrong_one() -> None:
    assert outer.apply(task_id="task-4").get() == {"helper": {}}
