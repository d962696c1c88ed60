"""The result schema: how a model's five grade probabilities become a screening decision,
and how an image the quality check refused is recorded instead."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.modelling.manifest import ModelManifest
from common.screening.grades import REFERABLE_MIN_GRADE


@dataclass(frozen=True)
class GradeOutcome:
    """One image's grade and referral decision, derived from the model's probabilities."""

    grade: int
    grade_name: str
    probabilities: tuple[float, ...]
    expected_grade: float  # probability-weighted mean grade: finer than the argmax
    referable: bool
    referable_probability: float
    referable_threshold: float
    confidence: float


def interpret_probabilities(probabilities: np.ndarray, manifest: ModelManifest) -> GradeOutcome:
    """Turn a softmax over the five ICDR grades into a grade and a referral decision.

    Referral follows P(grade >= 2) against the manifest's threshold rather than the argmax,
    so a programme can trade specificity for sensitivity without retraining.
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.shape != (len(manifest.class_names),) or not np.all(np.isfinite(probs)):
        raise ValueError(f"expected {len(manifest.class_names)} finite probabilities")
    total = probs.sum()
    if total <= 0:
        raise ValueError("probabilities sum to zero")
    probs = probs / total
    grade = int(np.argmax(probs))
    referable_probability = float(probs[REFERABLE_MIN_GRADE:].sum())
    return GradeOutcome(
        grade=grade,
        grade_name=manifest.class_names[grade],
        probabilities=tuple(round(float(p), 6) for p in probs),
        expected_grade=round(float(np.dot(probs, np.arange(probs.size))), 6),
        referable=referable_probability >= manifest.referable_threshold,
        referable_probability=round(referable_probability, 6),
        referable_threshold=manifest.referable_threshold,
        confidence=round(float(probs[grade]), 6),
    )


@dataclass(frozen=True)
class ImageOutcome:
    """What grading decided for one image: ungradable with reasons, or a grade."""

    gradable: bool
    reasons: tuple[str, ...]
    quality: dict[str, float]
    grade: GradeOutcome | None

    def __post_init__(self) -> None:
        if self.gradable != (self.grade is not None):
            raise ValueError("a gradable image has a grade, an ungradable one has none")
