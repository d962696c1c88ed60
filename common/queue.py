"""The Celery application factory and task names, shared by the API (producer) and the worker.

The API enqueues by task *name* through an app built here, so it never imports the worker
or TensorFlow. The broker is only a hint: the database says what remains to be graded.
A grading task sent for an upload carries the upload's request id in its headers
(:data:`REQUEST_ID_HEADER`), so the worker's log lines can name the request that sent it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery

from common.settings import Settings

GRADE_IMAGES_TASK = "retinaq.grade_images"
HEATMAP_TASK = "retinaq.explain_images"
DELIVER_WEBHOOK_TASK = "retinaq.deliver_webhook"
# The message header naming the HTTP request (``X-Request-ID``) that sent a task.
REQUEST_ID_HEADER = "request_id"


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """Per-transport options: folders for the embedded broker, visibility timeout for Redis."""
    if settings.broker_url.startswith("filesystem://"):
        folder = Path(settings.broker_url.removeprefix("filesystem://"))
        queue_dir = folder / "queue"
        processed_dir = folder / "processed"
        control_dir = folder / "control"
        for path in (queue_dir, processed_dir, control_dir):
            path.mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(queue_dir),
            "data_folder_out": str(queue_dir),
            "processed_folder": str(processed_dir),
            "control_folder": str(control_dir),
            "store_processed": False,
            "polling_interval": 0.2,
        }
    return {"visibility_timeout": settings.visibility_timeout_s}


def make_celery(settings: Settings, *, name: str = "retinaq") -> Celery:
    """A Celery app configured from settings; the worker adds its tasks to it."""
    broker_url = settings.broker_url
    if broker_url.startswith("filesystem://"):
        broker_url = "filesystem://"
    app = Celery(name, broker=broker_url, set_as_current=False)
    app.conf.update(
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.queue_name,
        task_routes={
            GRADE_IMAGES_TASK: {"queue": settings.queue_name},
            HEATMAP_TASK: {"queue": settings.heatmap_queue_name},
            DELIVER_WEBHOOK_TASK: {"queue": settings.webhook_queue_name},
        },
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        # A killed worker's tasks go back to the queue instead of being lost.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Grading tasks are long and batched; do not let one worker hoard the queue.
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # SIGTERM (warm shutdown) finishes the micro-batch in hand and stops consuming; on a
        # cold shutdown the task in hand still gets this long before the worker exits.
        worker_soft_shutdown_timeout=settings.shutdown_timeout_s,
        # Task events (sent, received, started, succeeded, failed) for Flower and other
        # monitors: one small broker message per step, against seconds of work per task.
        worker_send_task_events=True,
        task_send_sent_event=True,
        enable_utc=True,
    )
    return app


def send_grading(
    celery: Celery, settings: Settings, image_ids: list[Any], *, request_id: str | None = None
) -> int:
    """One grading task per ``task_size`` ids; a broker hiccup is retried briefly.

    Tasks are formed where the images arrive (one upload request becomes one or a few
    tasks), so a lone image is sent at once; the worker may still fill a short model batch
    with other queued images for up to ``batch_wait_ms``. ``request_id``, the upload's,
    travels in each task's headers. Returns how many tasks were sent.
    """
    chunks = chunked([str(i) for i in image_ids], settings.task_size)
    headers = {REQUEST_ID_HEADER: request_id} if request_id else None
    for chunk in chunks:
        celery.send_task(
            GRADE_IMAGES_TASK,
            args=[chunk],
            queue=settings.queue_name,
            headers=headers,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )
    return len(chunks)


def send_heatmap_task(celery: Celery, settings: Settings, image_ids: list[Any]) -> None:
    """Heat-map tasks on their own queue, so a worker serving grading never runs them first."""
    for chunk in chunked([str(i) for i in image_ids], settings.grading_batch_size):
        celery.send_task(
            HEATMAP_TASK,
            args=[chunk],
            queue=settings.heatmap_queue_name,
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )


def send_webhook_delivery(
    celery: Celery, settings: Settings, delivery_id: str, *, countdown: float | None = None
) -> None:
    """One delivery task per event, on the webhooks queue; ``countdown`` delays a retry."""
    celery.send_task(
        DELIVER_WEBHOOK_TASK,
        args=[delivery_id],
        queue=settings.webhook_queue_name,
        countdown=countdown,
        retry=True,
        retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
    )


def chunked(items: list[Any], size: int) -> list[list[Any]]:
    """Split into consecutive chunks of at most ``size`` items."""
    return [items[i : i + size] for i in range(0, len(items), size)]
