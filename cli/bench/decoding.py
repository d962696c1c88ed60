"""Decode cost per photograph size: one core's CPU time per image, part by part.

A sampling pass of its own after the offline loop, so the loop's figures stay what they
were: it calls :func:`common.imaging.prepare.prepare_image`'s three parts (decode, the
quality check, preprocessing) in its order with the thresholds a worker serves, one
image at a time as one decoder thread does, on a sample of each size. It reads the
thread's CPU clock, so other processes on a shared machine do not inflate the figures.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from cli.bench.report import DecodeCost, Decoding, Offline, make_decoding
from common.settings import Settings

if TYPE_CHECKING:
    from common.imaging.preprocessing import FundusPreprocessing
    from common.screening.quality import QualityThresholds

SAMPLES_PER_SIZE = 32


def measure_decoding(
    model_path: Path, files: list[Path], offline: Offline, samples: int = SAMPLES_PER_SIZE
) -> Decoding:
    """Mean CPU milliseconds per part over up to ``samples`` files of each size in
    ``files``, that size's share of them, and the ceilings per core."""
    from common.modelling.manifest import read_manifest

    manifest = read_manifest(model_path)
    preprocessor = manifest.preprocessor
    settings = Settings()
    thresholds = manifest.serving_quality_thresholds(settings.quality_thresholds)
    by_size = files_by_size(files)
    costs = []
    for size, paths in by_size.items():
        parts = [
            time_parts(path.read_bytes(), preprocessor, thresholds, settings.max_image_pixels)
            for path in paths[:samples]
        ]
        decode, check, preprocess = (
            1000 * sum(part) / len(parts) for part in zip(*parts, strict=True)
        )
        share = len(paths) / len(files)
        costs.append(DecodeCost.measured(size, share, len(parts), decode, check, preprocess))
    return make_decoding(costs, offline)


def files_by_size(files: list[Path]) -> dict[str, list[Path]]:
    """The files grouped by their pictures' WxH, read from the headers alone."""
    from PIL import Image

    groups: dict[str, list[Path]] = defaultdict(list)
    for path in files:
        with Image.open(path) as image:
            width, height = image.size
        groups[f"{width}x{height}"].append(path)
    return dict(groups)


def time_parts(
    data: bytes,
    preprocessor: FundusPreprocessing,
    thresholds: QualityThresholds,
    max_pixels: int,
) -> tuple[float, float, float]:
    """CPU seconds of decode, check and preprocess for one image; preprocess is 0 for an
    image the check refuses, which ``prepare_image`` does not preprocess either."""
    from common.imaging.gradability import assess_quality

    started = time.thread_time()
    image = preprocessor.decode(data, max_pixels=max_pixels)
    decoded = time.thread_time()
    quality = assess_quality(image, thresholds)
    checked = time.thread_time()
    if quality.gradable:
        preprocessor.pixels(image)
    return decoded - started, checked - decoded, time.thread_time() - checked
