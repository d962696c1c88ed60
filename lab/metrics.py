"""Grading metrics in pure numpy: what the manifest, the evaluation and the benchmark report.

QWK for the five ICDR grades, sensitivity/specificity and ROC AUC for the referable
decision (grade >= 2), as the published screening systems report them (docs/domain.md), and
percentile-bootstrap intervals around any of them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike

from common.screening.grades import N_GRADES, REFERABLE_MIN_GRADE


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


def per_grade_precision_recall(
    y_true: ArrayLike, y_pred: ArrayLike, n_classes: int = N_GRADES
) -> tuple[np.ndarray, np.ndarray]:
    """Per class ``(precision, recall)``: how far each predicted grade can be trusted, and found.

    Precision is NaN for a class never predicted, recall NaN for a class absent from the truth.
    """
    matrix = confusion_matrix(y_true, y_pred, n_classes).astype(np.float64)
    hits = np.diag(matrix)
    return _ratio(hits, matrix.sum(axis=0)), _ratio(hits, matrix.sum(axis=1))


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise ``numerator / denominator``, NaN where the denominator is 0 (no warning)."""
    out = np.full(numerator.shape, np.nan)
    return np.divide(numerator, denominator, out=out, where=denominator != 0)


def _binary_scores(y_true: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Boolean truth and float scores of one and the same 1-D shape, or a ValueError."""
    truth = np.asarray(y_true, dtype=bool)
    values = np.asarray(scores, dtype=np.float64)
    if truth.shape != values.shape or truth.ndim != 1:
        raise ValueError(f"y_true has shape {truth.shape} but scores have {values.shape}")
    return truth, values


def _counts_per_score(
    groups: np.ndarray, truth: np.ndarray, n_scores: int
) -> tuple[np.ndarray, np.ndarray]:
    """Positives and negatives at each distinct score, given each item's ascending score index."""
    return (
        np.bincount(groups[truth], minlength=n_scores),
        np.bincount(groups[~truth], minlength=n_scores),
    )


def _auc_from_counts(positives: np.ndarray, negatives: np.ndarray) -> float:
    """Mann-Whitney AUC from positive/negative counts per distinct score, in ascending order."""
    n_pos, n_neg = int(positives.sum()), int(negatives.sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    negatives_below = np.cumsum(negatives) - negatives
    wins = float(positives @ (negatives_below + 0.5 * negatives))
    return wins / (n_pos * n_neg)


def roc_auc(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve: the chance a random positive outscores a random negative.

    This is the Mann-Whitney statistic: the share of positive-negative pairs in which the
    positive scores higher, a tied pair counting one half. NaN when either class is absent.
    """
    truth, values = _binary_scores(y_true, scores)
    distinct, groups = np.unique(values, return_inverse=True)
    return _auc_from_counts(*_counts_per_score(groups, truth, distinct.size))


def roc_auc_statistic(y_true: ArrayLike, scores: ArrayLike) -> Callable[[np.ndarray], float]:
    """``roc_auc`` of the items at given indices, ranking once so a resample costs no sort."""
    truth, values = _binary_scores(y_true, scores)
    distinct, groups = np.unique(values, return_inverse=True)

    def statistic(indices: np.ndarray) -> float:
        return _auc_from_counts(*_counts_per_score(groups[indices], truth[indices], distinct.size))

    return statistic


def roc_curve(y_true: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` of flagging ``scores >= threshold``, from strictest to laxest.

    One point per distinct score plus ``(0, 0)`` at threshold ``+inf``; tied scores move both
    rates at once, so the trapezoid area under the points equals ``roc_auc``. ValueError when
    either class is absent, since one of the rates is then undefined.
    """
    truth, values = _binary_scores(y_true, scores)
    n_pos = int(truth.sum())
    if n_pos == 0 or n_pos == truth.size:
        raise ValueError("an ROC curve needs both positive and negative items")
    distinct, groups = np.unique(values, return_inverse=True)
    positives, negatives = _counts_per_score(groups, truth, distinct.size)
    tpr = np.concatenate([[0.0], np.cumsum(positives[::-1]) / n_pos])
    fpr = np.concatenate([[0.0], np.cumsum(negatives[::-1]) / (truth.size - n_pos)])
    return fpr, tpr, np.concatenate([[np.inf], distinct[::-1]])


def threshold_for_sensitivity(y_true: ArrayLike, scores: ArrayLike, target: float) -> float:
    """The highest ``t`` whose ``scores >= t`` reaches ``target`` sensitivity: the best specificity.

    That is the k-th highest positive score, for the least k with ``k / positives >= target``
    (the same division the sensitivity is reported with, so 0.7 of 10 positives is 7, not 8).
    ValueError without positives, with NaN scores, or for a target outside ``(0, 1]``.
    """
    truth, values = _binary_scores(y_true, scores)
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must lie in (0, 1], not {target}")
    if np.isnan(values).any():
        raise ValueError("scores must not be NaN: a threshold on them would mean nothing")
    positive_scores = np.sort(values[truth])[::-1]
    if positive_scores.size == 0:
        raise ValueError("no positive items, so no sensitivity to reach")
    reachable = np.arange(1, positive_scores.size + 1) / positive_scores.size >= target
    return float(positive_scores[int(np.argmax(reachable))])


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    strata: ArrayLike | None = None,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap ``(low, high)`` of ``statistic(indices)`` over resamples of ``n``.

    Each resample draws ``n`` indices into the caller's arrays with replacement, or, given
    ``strata`` (one label per item), draws each stratum's own size from within it, so that
    e.g. sensitivity keeps its number of positives as pROC's stratified bootstrap does.
    Resamples where the statistic is NaN (no positives drawn) are skipped, so the interval
    is conditional on the statistic being defined; ``(nan, nan)`` when it never is (or
    ``n`` is 0).
    Deterministic for a ``seed``; the cost is ``resamples`` calls of ``statistic``.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, not {resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), not {confidence}")
    labels = np.zeros(n, dtype=np.int64) if strata is None else np.asarray(strata)
    if labels.shape != (n,):
        raise ValueError(f"strata must hold one label for each of {n} items")
    if n == 0:
        return float("nan"), float("nan")
    members = [np.flatnonzero(labels == label) for label in np.unique(labels)]
    rng = np.random.default_rng(seed)
    values = np.fromiter(
        (statistic(_resample(members, rng)) for _ in range(resamples)),
        dtype=np.float64,
        count=resamples,
    )
    defined = values[~np.isnan(values)]
    if defined.size == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(defined, [(1.0 - confidence) / 2.0, (1.0 + confidence) / 2.0])
    return float(low), float(high)


def _resample(members: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """One bootstrap draw: each stratum's items with replacement, as many as it holds."""
    return np.concatenate([items[rng.integers(0, items.size, items.size)] for items in members])
