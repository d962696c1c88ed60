"""Celery tasks: thin like views, ids in, work delegated to :mod:`worker.grading.pipeline` and
:mod:`worker.grading.heatmaps`."""

from __future__ import annotations

import dataclasses
import json
import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from celery.exceptions import Reject

from common.queue import GRADE_IMAGES_TASK, HEATMAP_TASK
from common.storage.base import StoreUnavailable
from worker.celery_app import app
from worker.db_retry import DatabaseUnavailable

if TYPE_CHECKING:
    from worker.grading.pipeline import GradingReport

log = logging.getLogger(__name__)


@app.task(name=GRADE_IMAGES_TASK, ignore_result=True)
def grade_images_task(image_ids: list[str]) -> dict[str, int]:
    """Grade a micro-batch of images by id; repeated delivery is harmless.

    When the database stays down past the retry budget the message goes back to the
    broker (not acknowledged), so work that could not be recorded is not lost.
    """
    from worker.grading.pipeline import grade_images
    from worker.runtime import get_runtime

    try:
        runtime = get_runtime()
        report = grade_images(runtime, [uuid.UUID(i) for i in image_ids])
    except DatabaseUnavailable as error:
        log.error("database unavailable; returning %d image id(s) to the queue", len(image_ids))
        raise Reject(str(error), requeue=True) from error
    except StoreUnavailable as error:
        # The images are fine and stay claimed: their leases lapse and the reconciler sends
        # them again, so an outage of the store costs attempts, never a wrong "failed".
        log.error("image store unavailable; returning %d image id(s) to the queue", len(image_ids))
        raise Reject(str(error), requeue=True) from error
    counts = {
        "claimed": report.claimed,
        "graded": report.graded,
        "ungradable": report.ungradable,
        "failed": report.failed,
        "skipped": report.skipped,
        "fenced_out": report.fenced_out,
        "inferred": report.inferred,
    }
    timings_ms = {k: round(v, 1) for k, v in report.timings_ms.items()}
    # The task's header names the upload that sent it (every line of this task carries it,
    # worker.log_context); the micro-batch lines name the uploads whose images it graded.
    log.info(
        "task done: %s timings_ms=%s",
        " ".join(f"{k}={v}" for k, v in counts.items()),
        timings_ms,
        extra={**counts, "timings_ms": timings_ms},
    )
    reports = runtime.settings.task_reports_path
    if reports is not None:
        try:
            append_task_report(reports, report)
        except OSError:
            log.exception("could not append this task's report to %s", reports)
    return {
        "graded": report.graded,
        "ungradable": report.ungradable,
        "failed": report.failed,
        "skipped": report.skipped,
    }


def append_task_report(path: Path, report: GradingReport) -> None:
    """Append the report as one JSON line: figures for measurement travel as data, not logs.

    One ``write`` of the whole line to a file opened for appending, unbuffered, so worker
    processes sharing the file never interleave their lines.
    """
    record = {**dataclasses.asdict(report), "finished_at": datetime.now(UTC).isoformat()}
    with path.open("ab", buffering=0) as file:
        file.write(json.dumps(record).encode() + b"\n")


@app.task(name=HEATMAP_TASK, ignore_result=True)
def heatmap_task(image_ids: list[str]) -> int:
    """Make the heat maps these graded images still lack; repeated delivery is harmless."""
    from worker.grading.heatmaps import make_heatmaps
    from worker.runtime import get_runtime

    try:
        made = make_heatmaps(get_runtime(), [uuid.UUID(i) for i in image_ids])
    except DatabaseUnavailable as error:
        raise Reject(str(error), requeue=True) from error
    log.info("heat maps made=%d of %d image(s)", made, len(image_ids))
    return made
