"""The ceiling: a worker's per-image work on the same files in one tight loop, no servers."""

from __future__ import annotations

import time
from pathlib import Path

from cli.bench.report import Offline
from common.settings import Settings


def measure_offline(model_path: Path, files: list[Path], batch_size: int) -> Offline:
    """Read, prepare (decode, quality check, preprocess) and infer, batch by batch.

    Each image goes through :func:`common.imaging.prepare.prepare_image` with the
    thresholds a worker serves, so an image the check refuses costs its check here too
    and never reaches the model, exactly as in the worker. One thread, no decode budget.
    ``infer`` includes normalising, as the worker's ``infer`` does.
    """
    import numpy as np

    from common.imaging.prepare import prepare_image
    from worker.ml.model import load_model

    model = load_model(model_path, batch_size)
    preprocessor = model.manifest.preprocessor
    settings = Settings()
    thresholds = model.manifest.serving_quality_thresholds(settings.quality_thresholds)
    stages = {"read": 0.0, "decode_preprocess": 0.0, "infer": 0.0}
    gradable_images = 0
    started = time.perf_counter()
    for start in range(0, len(files), batch_size):
        clock = time.perf_counter()
        blobs = [path.read_bytes() for path in files[start : start + batch_size]]
        stages["read"] += time.perf_counter() - clock
        clock = time.perf_counter()
        prepared = [
            prepare_image(
                blob, preprocessor, thresholds, max_pixels=settings.max_image_pixels, budget=None
            )
            for blob in blobs
        ]
        gradable = [image.pixels for image in prepared if image.pixels is not None]
        stages["decode_preprocess"] += time.perf_counter() - clock
        gradable_images += len(gradable)
        if not gradable:
            continue
        clock = time.perf_counter()
        model.predict(preprocessor.normalise(np.stack(gradable)))
        stages["infer"] += time.perf_counter() - clock
    elapsed = time.perf_counter() - started
    return Offline.measured(
        len(files),
        elapsed,
        stages_s={k: round(v, 3) for k, v in stages.items()},
        gradable=gradable_images,
    )
