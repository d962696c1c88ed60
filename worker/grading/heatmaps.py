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

from common.db.tables import Image, Result
from common.imaging.decode import ImageDecodeError
from common.storage.blobs import commit_release, lock_blobs, release_blobs, unplace
from worker.db_retry import with_db_retry
from worker.grading.overlay import render_overlay

if TYPE_CHECKING:
    from worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Wanted:
    """A graded result still without a heat map."""

    result_id: uuid.UUID
    image_id: uuid.UUID
    storage_path: str


def make_heatmaps(runtime: WorkerRuntime, image_ids: list[uuid.UUID]) -> int:
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
            image = preprocessor.decode(
                data, max_pixels=runtime.settings.max_image_pixels, budget=runtime.pixel_budget
            )
            squares.append(preprocessor.square(image))
            ready.append(item)
        except FileNotFoundError:
            # Not the error's text: it names the stored file, the bytes' key and hash.
            log.warning("no heat map for image %s: missing_file", item.image_id)
        except ImageDecodeError as error:
            log.warning("no heat map for image %s: %s", item.image_id, error.code)
    if not ready:
        return 0
    inputs = np.stack([preprocessor.model_input(square) for square in squares])
    heat = runtime.gradcam.heatmaps(preprocessor.normalise(inputs))
    # Drawn on the photograph as a person sees it, not on a Ben Graham model's input.
    overlays = {
        item.result_id: render_overlay(square, heatmap)
        for item, square, heatmap in zip(ready, squares, heat, strict=True)
    }
    return with_db_retry(lambda: _record(runtime, overlays), budget_s=budget)


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


def _record(runtime: WorkerRuntime, overlays: dict[uuid.UUID, bytes]) -> int:
    """Store the overlays and name them on their results, in one transaction.

    The bytes go in place under their blob locks and only for results still there and
    still without a heat map, so a purge racing this write neither loses a heat map a
    result names nor leaves behind one that no result names.
    """
    store = runtime.store
    spools = {result_id: store.spool_bytes(png) for result_id, png in overlays.items()}
    placed: list[str] = []
    try:
        with runtime.sessions() as session:
            try:
                lock_blobs(session, {spool.sha256: spool.size for spool in spools.values()})
                written = 0
                unnamed: set[str] = set()
                for result_id, spool in spools.items():
                    named = session.execute(
                        update(Result)
                        .where(Result.id == result_id, Result.heatmap_sha256.is_(None))
                        .values(heatmap_sha256=spool.sha256)
                        .execution_options(synchronize_session=False)
                    ).rowcount
                    if not named:
                        unnamed.add(spool.sha256)  # purged meanwhile, or made by another worker
                    elif store.place(spool):
                        placed.append(spool.sha256)
                    written += named
                release = release_blobs(session, store, unnamed)
            except BaseException:
                unplace(store, placed)  # the locks are still held: nothing has rolled back
                raise
            commit_release(session, store, release)
            return written
    finally:
        for spool in spools.values():
            store.discard(spool)
