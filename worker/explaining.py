"""Heat maps for graded images: Grad-CAM overlays stored content-addressed on the result.

Runs as its own task on its own queue, after the grade is recorded, so a heat map never
delays a result and a deployment can give heat maps their own workers. Idempotent: a
result that already has a heat map is skipped, and the write only fills an empty slot.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import select, update

from common.heatmaps import render_overlay
from common.imaging import ImageDecodeError
from common.models import Image, Result
from worker.db_retry import with_db_retry

if TYPE_CHECKING:
    from worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Wanted:
    """A graded result still without a heat map."""

    result_id: uuid.UUID
    image_id: uuid.UUID
    storage_path: str


def explain_images(runtime: WorkerRuntime, image_ids: list[uuid.UUID]) -> int:
    """Make the missing heat maps of these images' results by the held model; returns how many."""
    budget = runtime.settings.db_retry_s
    wanted = with_db_retry(lambda: _wanted(runtime, image_ids), budget_s=budget)
    if not wanted:
        return 0
    preprocessor = runtime.model.manifest.preprocessor
    squares: list[np.ndarray] = []
    ready: list[Wanted] = []
    for item in wanted:
        try:
            data = runtime.store.read(item.storage_path)
            image = preprocessor.decode(data, max_pixels=runtime.settings.max_image_pixels)
            squares.append(preprocessor.square(image))
            ready.append(item)
        except (FileNotFoundError, ImageDecodeError) as error:
            log.warning("no heat map for image %s: %s", item.image_id, error)
    if not ready:
        return 0
    inputs = np.stack([preprocessor.model_input(square) for square in squares])
    heat = runtime.gradcam.heatmaps(preprocessor.normalise(inputs))
    # Drawn on the photograph as a person sees it, not on a Ben Graham model's input.
    stored = {
        item.result_id: runtime.store.put(render_overlay(square, heatmap))
        for item, square, heatmap in zip(ready, squares, heat, strict=True)
    }
    return with_db_retry(lambda: _record(runtime, stored), budget_s=budget)


def _wanted(runtime: WorkerRuntime, image_ids: list[uuid.UUID]) -> list[Wanted]:
    with runtime.sessions() as session:
        rows = session.execute(
            select(Result.id, Result.image_id, Image.storage_path)
            .join(Image, Image.id == Result.image_id)
            .where(
                Result.image_id.in_(image_ids),
                Result.model_sha256 == runtime.model.manifest.sha256,
                Result.gradable.is_(True),
                Result.heatmap_sha256.is_(None),
            )
            .order_by(Result.image_id)
        ).all()
    return [Wanted(*row) for row in rows]


def _record(runtime: WorkerRuntime, stored: dict[uuid.UUID, str]) -> int:
    written = 0
    with runtime.sessions.begin() as session:
        for result_id, sha256 in stored.items():
            written += session.execute(
                update(Result)
                .where(Result.id == result_id, Result.heatmap_sha256.is_(None))
                .values(heatmap_sha256=sha256)
                .execution_options(synchronize_session=False)
            ).rowcount
    return written
