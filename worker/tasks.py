"""Celery tasks: thin like views, ids in, work delegated to :mod:`worker.grading`."""

from __future__ import annotations

import logging
import uuid

from celery.exceptions import Reject

from common.queue import GRADE_IMAGES_TASK
from worker.celery_app import app
from worker.db_retry import DatabaseUnavailable

log = logging.getLogger(__name__)


@app.task(name=GRADE_IMAGES_TASK, ignore_result=True)
def grade_images_task(image_ids: list[str]) -> dict[str, int]:
    """Grade a micro-batch of images by id; repeated delivery is harmless.

    When the database stays down past the retry budget the message goes back to the
    broker (not acknowledged), so work that could not be recorded is not lost.
    """
    from worker.grading import grade_images
    from worker.runtime import get_runtime

    try:
        report = grade_images(get_runtime(), [uuid.UUID(i) for i in image_ids])
    except DatabaseUnavailable as error:
        log.error("database unavailable; returning %d image id(s) to the queue", len(image_ids))
        raise Reject(str(error), requeue=True) from error
    log.info(
        "graded=%d failed=%d skipped=%d fenced_out=%d inferred=%d timings_ms=%s",
        report.graded,
        report.failed,
        report.skipped,
        report.fenced_out,
        report.inferred,
        {k: round(v, 1) for k, v in report.timings_ms.items()},
    )
    return {"graded": report.graded, "failed": report.failed, "skipped": report.skipped}
