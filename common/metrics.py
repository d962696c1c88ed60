"""Grading metrics in pure numpy: what the manifest, the evaluation and the benchmark report.

QWK for the five ICDR grades, sensitivity/specificity and ROC AUC for the referable
decision (grade >= 2), as the published screening systems report them (DOMAIN.md).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from common.manifest import GRADE_NAMES, REFERABLE_MIN_GRADE

N_GRADES = len(GRADE_NAMES)


def _labels(values: ArrayLike, n_classes: int, what: str) -> np.ndarray:
    """Integer class labels in ``0..n_classes-1``, or a ValueError naming the bad input."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, not shape {array.shape}")
    labels = array.astype(np.int64)
    if array.size and (not np.array_equal(labels, array) or labels.min() < 0):
        raise ValueError(f"{what} must hold integer labels >= 0")
    if array.size and labels.max() >= n_classes:
        raise ValueError(f"{what} has label {labels.max()}, beyond {n_classes} classes")
    return labels


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int = N_GRADES) -> np.ndarray:
    """Counts ``C[i, j]`` of items whose true class is ``i`` and predicted class is ``j``."""
    truth = _labels(y_true, n_classes, "y_true")
    pred = _labels(y_pred, n_classes, "y_pred")
    if truth.shape != pred.shape:
        raise ValueError(f"y_true has {truth.size} labels but y_pred has {pred.size}")
    return np.bincount(truth * n_classes + pred, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Share of exact agreements: ``mean(y_true == y_pred)``; NaN for no items."""
    truth, pred = np.asarray(y_true), np.asarray(y_pred)
    if truth.shape != pred.shape:
        raise ValueError(f"y_true has shape {truth.shape} but y_pred has {pred.shape}")
    return float(np.mean(truth == pred)) if truth.size else float("nan")


def quadratic_weighted_kappa(
    y_true: ArrayLike, y_pred: ArrayLike, n_classes: int = N_GRADES
) -> float:
    """Cohen's kappa with quadratic weights, the Kaggle DR metric: 1 perfect, 0 chance.

    ``kappa = 1 - sum(W * O) / sum(W * E)`` where ``O`` is the confusion matrix,
    ``E = outer(row sums, column sums) / n`` the matrix expected by chance from the two
    marginals, and ``W[i, j] = (i - j)**2 / (n_classes - 1)**2``. When ``sum(W * E)`` is 0
    both raters used one and the same class for every item, which is perfect agreement: 1.0.
    """
    observed = confusion_matrix(y_true, y_pred, n_classes).astype(np.float64)
    total = observed.sum()
    if total == 0:
        return float("nan")
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / total
    grid = np.arange(n_classes)
    weights = (grid[:, None] - grid[None, :]) ** 2 / max(n_classes - 1, 1) ** 2
    chance = float((weights * expected).sum())
    if chance == 0.0:
        return 1.0
    return 1.0 - float((weights * observed).sum()) / chance


def referable_probability(
    probabilities: ArrayLike, min_grade: int = REFERABLE_MIN_GRADE
) -> np.ndarray:
    """P(grade >= ``min_grade``) from softmax rows over the grades: the referable score."""
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probabilities must be (n, classes), not shape {probs.shape}")
    return probs[:, min_grade:].sum(axis=1)


def referable_sensitivity_specificity(
    y_true_grades: ArrayLike,
    referable_pred: ArrayLike,
    min_grade: int = REFERABLE_MIN_GRADE,
) -> tuple[float, float]:
    """``(TP / (TP + FN), TN / (TN + FP))`` for "refer" against true grade >= ``min_grade``.

    Either is NaN when the truth has no referable (respectively no non-referable) items.
    """
    grades = np.asarray(y_true_grades)
    predicted = np.asarray(referable_pred, dtype=bool)
    if grades.shape != predicted.shape:
        raise ValueError(f"{grades.size} grades but {predicted.size} referable predictions")
    referable = grades >= min_grade
    positives, negatives = int(referable.sum()), int((~referable).sum())
    true_pos = int((referable & predicted).sum())
    true_neg = int((~referable & ~predicted).sum())
    sensitivity = true_pos / positives if positives else float("nan")
    specificity = true_neg / negatives if negatives else float("nan")
    return sensitivity, specificity


def roc_auc(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve: the chance a random positive outscores a random negative.

    Computed as the Mann-Whitney statistic ``(R+ - n+(n+ + 1)/2) / (n+ n-)``, where ``R+``
    is the sum of the positives' ranks among all scores (ties share their average rank, so a
    tied positive-negative pair counts one half). NaN when either class is absent.
    """
    truth = np.asarray(y_true, dtype=bool)
    values = np.asarray(scores, dtype=np.float64)
    if truth.shape != values.shape or truth.ndim != 1:
        raise ValueError(f"y_true has shape {truth.shape} but scores have {values.shape}")
    n_pos = int(truth.sum())
    n_neg = truth.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    first_rank = np.cumsum(counts) - counts + 1
    average_rank = first_rank + (counts - 1) / 2.0
    rank_sum = float(average_rank[inverse][truth].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
