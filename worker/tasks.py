"""Celery tasks: thin like views, ids in, work delegated to :mod:`worker.grading`."""

from __future__ import annotations

import logging
import uuid

from common.queue import GRADE_IMAGES_TASK
from worker.celery_app import app

log = logging.getLogger(__name__)


@app.task(name=GRADE_IMAGES_TASK, ignore_result=True)
def grade_images_task(image_ids: list[str]) -> dict[str, int]:
    """Grade a micro-batch of images by id; repeated delivery is harmless."""
    from worker.grading import grade_images
    from worker.runtime import get_runtime

    report = grade_images(get_runtime(), [uuid.UUID(i) for i in image_ids])
    log.info(
        "graded=%d failed=%d skipped=%d fenced_out=%d timings_ms=%s",
        report.graded,
        report.failed,
        report.skipped,
        report.fenced_out,
        {k: round(v, 1) for k, v in report.timings_ms.items()},
    )
    return {"graded": report.graded, "failed": report.failed, "skipped": report.skipped}
