"""A held-out evaluation as one JSON-ready report: point estimates with bootstrap intervals.

The worker's training, the CLI and any audit of a model read the same numbers from here, and
every metric is computed over gradable images only, since an ungradable image has no grade.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from common.screening.grades import GRADE_NAMES, REFERABLE_MIN_GRADE
from lab.metrics import (
    accuracy,
    bootstrap_interval,
    confusion_matrix,
    per_grade_precision_recall,
    quadratic_weighted_kappa,
    referable_probability,
    referable_sensitivity_specificity,
    roc_auc,
    roc_auc_statistic,
    roc_curve,
    threshold_for_sensitivity,
)

CONFIDENCE = 0.95
ROC_POINTS = 200


def evaluation_report(
    grades: ArrayLike,
    probabilities: ArrayLike,
    *,
    referable_threshold: float,
    gradable: ArrayLike | None = None,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Grading and referable-DR metrics of softmax ``probabilities`` against true ``grades``.

    ``grades`` (n,) and ``probabilities`` (n, 5) cover every image; ``gradable`` (n,) marks
    the ones the metrics use (all, when None), so an ungradable image's grade and
    probabilities are never read. The shape, with ``E = {"value", "low", "high"}`` a point
    estimate and its 95 % percentile-bootstrap interval, every number rounded to 4 decimals
    and every undefined one (NaN) None::

        {"images", "gradable", "ungradable": int, "ungradable_rate": float,
         "accuracy": float, "quadratic_weighted_kappa": E,
         "confusion_matrix": 5x5 list (true grade rows, predicted grade columns),
         "per_grade": {grade name: {"precision", "recall": float, "support": int}},
         "referable": {"threshold": float, "positives", "negatives": int,
                       "prevalence": float, "sensitivity": E, "specificity": E, "auc": E,
                       "roc": {"fpr", "tpr", "thresholds": lists} or None},
         "bootstrap": {"resamples": int, "confidence": float, "seed": int}}

    :func:`manifest_metrics` flattens it into the summary a manifest carries.
    The ROC curve holds at most ``ROC_POINTS`` points, its first threshold None (+inf:
    nothing flagged); it is None when either referable class is absent. Sensitivity,
    specificity and AUC resample within the referable and non-referable images (stratified),
    QWK over all gradable images.
    """
    images = int(np.asarray(grades).size)
    truth, scores = _gradable_rows(grades, probabilities, gradable)
    count = int(truth.size)

    def interval(
        statistic: Callable[[np.ndarray], float], strata: np.ndarray | None = None
    ) -> tuple[float, float]:
        return bootstrap_interval(
            statistic, count, strata=strata, resamples=resamples, confidence=CONFIDENCE, seed=seed
        )

    return {
        "images": images,
        "gradable": count,
        "ungradable": images - count,
        "ungradable_rate": _number((images - count) / images if images else math.nan),
        **_grading_section(truth, scores.argmax(axis=1), interval),
        "referable": _referable_section(truth, scores, referable_threshold, interval),
        "bootstrap": {"resamples": resamples, "confidence": CONFIDENCE, "seed": seed},
    }


Interval = Callable[..., tuple[float, float]]


def _grading_section(truth: np.ndarray, predicted: np.ndarray, interval: Interval) -> dict:
    """Accuracy, QWK, the confusion matrix and per-grade precision and recall."""
    matrix = confusion_matrix(truth, predicted)
    precision, recall = per_grade_precision_recall(truth, predicted)
    return {
        "accuracy": _number(accuracy(truth, predicted)),
        "quadratic_weighted_kappa": _estimate(
            quadratic_weighted_kappa(truth, predicted),
            interval(lambda i: quadratic_weighted_kappa(truth[i], predicted[i])),
        ),
        "confusion_matrix": matrix.tolist(),
        "per_grade": {
            name: {
                "precision": _number(precision[grade]),
                "recall": _number(recall[grade]),
                "support": int(matrix[grade].sum()),
            }
            for grade, name in enumerate(GRADE_NAMES)
        },
    }


def _referable_section(
    truth: np.ndarray, scores: np.ndarray, threshold: float, interval: Interval
) -> dict:
    """Referable DR at ``threshold`` on P(grade >= 2): sensitivity, specificity, AUC, ROC;
    the intervals resample within the referable and non-referable images (stratified)."""
    count = int(truth.size)
    referable = truth >= REFERABLE_MIN_GRADE
    positives = int(referable.sum())
    score = referable_probability(scores)
    flagged = score >= threshold
    sensitivity, specificity = referable_sensitivity_specificity(truth, flagged)
    return {
        "threshold": float(threshold),
        "positives": positives,
        "negatives": count - positives,
        "prevalence": _number(positives / count if count else math.nan),
        "sensitivity": _estimate(
            sensitivity,
            interval(
                lambda i: referable_sensitivity_specificity(truth[i], flagged[i])[0], referable
            ),
        ),
        "specificity": _estimate(
            specificity,
            interval(
                lambda i: referable_sensitivity_specificity(truth[i], flagged[i])[1], referable
            ),
        ),
        "auc": _estimate(
            roc_auc(referable, score), interval(roc_auc_statistic(referable, score), referable)
        ),
        "roc": _roc_points(referable, score) if 0 < positives < count else None,
    }


def manifest_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The flat summary of an :func:`evaluation_report` that a model manifest carries.

    Point estimates under the names manifests have always used, so readers of older
    manifests keep working, plus each estimate's 95 % interval under ``intervals``.
    """
    referable = report["referable"]
    estimates = {
        "quadratic_weighted_kappa": report["quadratic_weighted_kappa"],
        "referable_sensitivity": referable["sensitivity"],
        "referable_specificity": referable["specificity"],
        "referable_auc": referable["auc"],
    }
    return {
        "held_out_images": report["gradable"],
        "accuracy": report["accuracy"],
        **{name: estimate["value"] for name, estimate in estimates.items()},
        "confusion_matrix": report["confusion_matrix"],
        "intervals": {
            name: [estimate["low"], estimate["high"]] for name, estimate in estimates.items()
        },
    }


def choose_operating_point(
    grades: ArrayLike, probabilities: ArrayLike, target_sensitivity: float
) -> dict[str, Any]:
    """The strictest referable threshold reaching ``target_sensitivity``, and what it achieves.

    Returns ``{"target_sensitivity", "threshold", "sensitivity", "specificity"}``, the
    threshold unrounded, for it is meant to go into a manifest as ``referable_threshold``.
    """
    truth = np.asarray(grades)
    score = referable_probability(probabilities)
    threshold = threshold_for_sensitivity(truth >= REFERABLE_MIN_GRADE, score, target_sensitivity)
    sensitivity, specificity = referable_sensitivity_specificity(truth, score >= threshold)
    return {
        "target_sensitivity": float(target_sensitivity),
        "threshold": threshold,
        "sensitivity": _number(sensitivity),
        "specificity": _number(specificity),
    }


def _gradable_rows(
    grades: ArrayLike, probabilities: ArrayLike, gradable: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray]:
    """Grades and probability rows of the gradable images, or a ValueError on mismatched shapes."""
    truth = np.asarray(grades)
    scores = np.asarray(probabilities, dtype=np.float64)
    keep = np.ones(truth.shape, dtype=bool) if gradable is None else np.asarray(gradable, bool)
    if truth.ndim != 1 or keep.shape != truth.shape:
        raise ValueError(f"grades {truth.shape} and gradable {keep.shape} must be one (n,) shape")
    if scores.shape != (truth.size, len(GRADE_NAMES)):
        raise ValueError(
            f"probabilities must be ({truth.size}, {len(GRADE_NAMES)}), not {scores.shape}"
        )
    return truth[keep], scores[keep]


def _roc_points(referable: np.ndarray, score: np.ndarray) -> dict[str, list[float | None]]:
    """The ROC curve for plotting: straight runs merged, then at most ``ROC_POINTS`` points."""
    fpr, tpr, thresholds = roc_curve(referable, score)
    turns = (np.diff(fpr)[:-1] * np.diff(tpr)[1:]) != (np.diff(tpr)[:-1] * np.diff(fpr)[1:])
    keep = np.flatnonzero(np.concatenate([[True], turns, [True]]))
    if keep.size > ROC_POINTS:
        keep = keep[np.unique(np.round(np.linspace(0, keep.size - 1, ROC_POINTS)).astype(int))]
    return {
        "fpr": [_number(value) for value in fpr[keep]],
        "tpr": [_number(value) for value in tpr[keep]],
        "thresholds": [_number(value) for value in thresholds[keep]],
    }


def _estimate(value: float, interval: tuple[float, float]) -> dict[str, float | None]:
    """A point estimate with its interval, JSON-ready."""
    low, high = interval
    return {"value": _number(value), "low": _number(low), "high": _number(high)}


def _number(value: float) -> float | None:
    """JSON-safe metric: four decimals, and None for an undefined or infinite value."""
    return round(float(value), 4) if math.isfinite(value) else None
