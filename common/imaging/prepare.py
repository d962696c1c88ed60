"""The worker's per-image work, once: bytes → photograph → gradability → model input.

The worker, ``retinaq evaluate`` and the benchmark's offline ceiling all call
:func:`prepare_image`, so an image is judged and prepared identically wherever it is
graded, and the benchmark's ceiling does exactly the work a worker does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.imaging.gradability import assess_quality
from common.imaging.pixel_budget import PixelBudget
from common.imaging.preprocessing import FundusPreprocessing
from common.screening.quality import QualityReport, QualityThresholds

UNCHECKED = QualityReport(gradable=True, reasons=(), measures={})
"""The report of an image that was not checked (the deployment turned the check off)."""


@dataclass(frozen=True)
class PreparedImage:
    """One photograph ready for the model: its quality, and its input when it is gradable."""

    quality: QualityReport
    pixels: np.ndarray | None  # the uint8 square input; None when the check refused it


def prepare_image(
    data: bytes,
    preprocessor: FundusPreprocessing,
    thresholds: QualityThresholds | None,
    *,
    max_pixels: int,
    budget: PixelBudget | None = None,
) -> PreparedImage:
    """Decode, check (unless ``thresholds`` is None) and preprocess one image.

    Raises :class:`common.imaging.decode.ImageDecodeError` for bytes that are not a
    photograph it may decode; an ungradable photograph is a value, not an error.
    """
    image = preprocessor.decode(data, max_pixels=max_pixels, budget=budget)
    if thresholds is None:
        return PreparedImage(UNCHECKED, preprocessor.pixels(image))
    quality = assess_quality(image, thresholds)
    if not quality.gradable:
        return PreparedImage(quality, None)
    return PreparedImage(quality, preprocessor.pixels(image))
