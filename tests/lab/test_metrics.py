"""Grading metrics against values worked out by hand."""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction

import numpy as np
import pytest

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


def test_confusion_matrix_counts_true_rows_and_predicted_columns() -> None:
    matrix = confusion_matrix([0, 1, 2, 2], [0, 2, 2, 1], n_classes=3)
    assert matrix.tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 1]]


def test_confusion_matrix_defaults_to_five_grades() -> None:
    matrix = confusion_matrix([4, 0], [3, 0])
    assert matrix.shape == (5, 5)
    assert matrix[4, 3] == 1 and matrix[0, 0] == 1 and matrix.sum() == 2


@pytest.mark.parametrize(
    "y_true,y_pred,message",
    [
        ([0, 1], [0], "labels"),
        ([0, 5], [0, 1], "beyond"),
        ([0, -1], [0, 1], "integer"),
        ([0.5, 1], [0, 1], "integer"),
    ],
)
def test_confusion_matrix_rejects_bad_labels(y_true: list, y_pred: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        confusion_matrix(y_true, y_pred)


@pytest.mark.parametrize(
    "y_true,y_pred,n_classes,expected",
    [
        # perfect agreement
        ([0, 1, 2, 3, 4], [0, 1, 2, 3, 4], 5, 1.0),
        # the extremes swapped: sum(W*O) = 4, sum(W*E) = 2, so 1 - 4/2
        ([0, 0, 4, 4], [4, 4, 0, 0], 5, -1.0),
        # every cell once: observed equals expected
        ([0, 0, 1, 1], [0, 1, 0, 1], 2, 0.0),
        # W = (i-j)^2/4; sum(W*O) = 0.25, sum(W*E) = 2/3 + 1/4 + 1/3 = 1.25
        ([0, 1, 2], [0, 2, 2], 3, 0.8),
        # one grade each, the same one: perfect, although sum(W*E) is 0
        ([2, 2, 2], [2, 2, 2], 5, 1.0),
        # one grade each, different ones: observed equals expected
        ([2, 2], [1, 1], 5, 0.0),
    ],
)
def test_quadratic_weighted_kappa(
    y_true: list[int], y_pred: list[int], n_classes: int, expected: float
) -> None:
    assert quadratic_weighted_kappa(y_true, y_pred, n_classes) == pytest.approx(expected)


def test_quadratic_weighted_kappa_penalises_distant_errors_more() -> None:
    truth = [0, 1, 2, 3, 4] * 4
    near = [min(g + 1, 4) for g in truth]
    far = [min(g + 3, 4) for g in truth]
    assert 0 < quadratic_weighted_kappa(truth, far) < quadratic_weighted_kappa(truth, near) < 1


def test_quadratic_weighted_kappa_of_nothing_is_nan() -> None:
    assert math.isnan(quadratic_weighted_kappa([], []))


def test_accuracy() -> None:
    assert accuracy([0, 1, 2], [0, 2, 2]) == pytest.approx(2 / 3)
    assert math.isnan(accuracy([], []))


def test_referable_probability_sums_grades_two_to_four() -> None:
    probs = [[0.1, 0.2, 0.3, 0.2, 0.2], [0.9, 0.1, 0.0, 0.0, 0.0]]
    assert referable_probability(probs).tolist() == pytest.approx([0.7, 0.0])


@pytest.mark.parametrize(
    "grades,referable,expected",
    [
        # referable truth F F T T T T: TP 3 of 4, TN 1 of 2
        ([0, 1, 2, 3, 4, 2], [False, True, True, False, True, True], (0.75, 0.5)),
        ([0, 1, 2, 4], [False, False, True, True], (1.0, 1.0)),
        ([0, 1, 2, 4], [True, True, False, False], (0.0, 0.0)),
    ],
)
def test_referable_sensitivity_specificity(
    grades: list[int], referable: list[bool], expected: tuple[float, float]
) -> None:
    assert referable_sensitivity_specificity(grades, referable) == pytest.approx(expected)


def test_sensitivity_is_nan_without_referable_eyes() -> None:
    sensitivity, specificity = referable_sensitivity_specificity([0, 1, 1], [False, True, False])
    assert math.isnan(sensitivity)
    assert specificity == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "truth,scores,expected",
    [
        # pairs (pos, neg): 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4 -> 3 of 4
        ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.75),
        ([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], 1.0),
        ([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4], 0.0),
        # a tie between a positive and a negative counts one half
        ([0, 1], [0.5, 0.5], 0.5),
        ([0, 0, 1], [0.2, 0.6, 0.6], 0.75),
    ],
)
def test_roc_auc(truth: list[int], scores: list[float], expected: float) -> None:
    assert roc_auc(np.asarray(truth, dtype=bool), scores) == pytest.approx(expected)


def test_roc_auc_matches_counting_pairs() -> None:
    rng = np.random.default_rng(0)
    truth = rng.random(200) < 0.3
    scores = np.round(rng.random(200) + 0.3 * truth, 1)  # rounding makes ties
    pos, neg = scores[truth], scores[~truth]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert roc_auc(truth, scores) == pytest.approx(wins / (pos.size * neg.size))


def test_roc_auc_needs_both_classes() -> None:
    assert math.isnan(roc_auc([True, True], [0.2, 0.3]))


def test_quadratic_weighted_kappa_on_a_five_grade_matrix_worked_by_hand() -> None:
    """truth 0 0 1 2 4, predicted 0 1 1 4 4: O has ones at (0,0) (0,1) (1,1) (2,4) (4,4).

    W[i, j] = (i - j)^2 / 16. Disagreement observed: (0,1) costs 1/16, (2,4) costs 4/16.
    Row sums r = (2, 1, 1, 0, 1), column sums c = (1, 2, 0, 0, 2), n = 5, E = r c^T / 5, so
    16 * 5 * sum(W * E) = sum r_i c_j (i - j)^2 over the nonzero r_i, c_j:
      i=0: 2*2*1 + 2*2*16 = 68;  i=1: 1*1*1 + 1*2*9 = 19;
      i=2: 1*1*4 + 1*2*1 + 1*2*4 = 14;  i=4: 1*1*16 + 1*2*9 = 34;  total 135.
    kappa = 1 - (5/16) / (135/80) = 1 - 5/27 = 22/27.
    """
    observed = Fraction(1, 16) + Fraction(4, 16)
    expected = Fraction(68 + 19 + 14 + 34, 16 * 5)
    kappa = 1 - observed / expected
    assert kappa == Fraction(22, 27)
    assert quadratic_weighted_kappa([0, 0, 1, 2, 4], [0, 1, 1, 4, 4]) == pytest.approx(
        float(kappa), rel=1e-12
    )


def test_quadratic_weighted_kappa_on_a_three_class_matrix_worked_by_hand() -> None:
    """O = [[2,1,0],[0,1,1],[1,0,1]]: rows and columns both sum to (3, 2, 2), n = 7.

    W = (i - j)^2 / 4. Observed disagreement: (0,1) 1/4, (1,2) 1/4, (2,0) 1, sum 3/2.
    E = r c^T / 7 = [[9,6,6],[6,4,4],[6,4,4]] / 7, so sum(W * E) =
    (6/4 + 6 + 6/4 + 4/4 + 6 + 4/4) / 7 = 17/7, and kappa = 1 - (3/2) / (17/7) = 13/34.
    """
    observed = Fraction(1, 4) + Fraction(1, 4) + 1
    expected = (Fraction(6, 4) + 6 + Fraction(6, 4) + Fraction(4, 4) + 6 + Fraction(4, 4)) / 7
    kappa = 1 - observed / expected
    assert kappa == Fraction(13, 34)
    truth = [0, 0, 0, 1, 1, 2, 2]
    predicted = [0, 0, 1, 1, 2, 0, 2]
    assert confusion_matrix(truth, predicted, 3).tolist() == [[2, 1, 0], [0, 1, 1], [1, 0, 1]]
    assert quadratic_weighted_kappa(truth, predicted, 3) == pytest.approx(float(kappa), rel=1e-12)


def test_per_grade_precision_recall_on_a_known_matrix() -> None:
    # C = [[2,1,0,0],[1,1,0,0],[1,0,0,0],[0,0,0,0]]: column sums (4,2,0,0), row sums (3,2,1,0);
    # class 2 is never predicted (precision undefined), class 3 never occurs (both undefined).
    truth = [0, 0, 0, 1, 1, 2]
    predicted = [0, 0, 1, 1, 0, 0]
    precision, recall = per_grade_precision_recall(truth, predicted, n_classes=4)
    np.testing.assert_allclose(precision, [2 / 4, 1 / 2, np.nan, np.nan])
    np.testing.assert_allclose(recall, [2 / 3, 1 / 2, 0.0, np.nan])


def test_per_grade_precision_recall_is_one_when_perfect() -> None:
    precision, recall = per_grade_precision_recall([0, 1, 2, 3, 4, 4], [0, 1, 2, 3, 4, 4])
    assert precision.tolist() == [1.0] * 5 and recall.tolist() == [1.0] * 5


def test_roc_curve_on_toy_scores() -> None:
    # flagged at >= 0.8: one positive; >= 0.4: and a negative; >= 0.35: both positives; ...
    fpr, tpr, thresholds = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert thresholds.tolist() == [np.inf, 0.8, 0.4, 0.35, 0.1]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]


def test_roc_curve_moves_both_rates_at_a_tie() -> None:
    fpr, tpr, thresholds = roc_curve([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9])
    assert thresholds.tolist() == [np.inf, 0.9, 0.5, 0.2]
    assert list(zip(fpr, tpr, strict=True)) == [(0, 0), (0, 0.5), (0.5, 1), (1, 1)]


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_curve_is_monotone_from_corner_to_corner_with_roc_auc_as_area(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.random(300) < 0.3
    scores = np.round(rng.random(300) + 0.4 * truth, 1)  # rounding makes ties
    fpr, tpr, thresholds = roc_curve(truth, scores)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.all(np.diff(thresholds) < 0)
    assert _trapezoid(fpr, tpr) == pytest.approx(roc_auc(truth, scores), abs=1e-12)


@pytest.mark.parametrize("truth", [[True, True], [False, False]])
def test_roc_curve_needs_both_classes(truth: list[bool]) -> None:
    with pytest.raises(ValueError, match="both"):
        roc_curve(truth, [0.2, 0.3])


def test_roc_auc_statistic_matches_roc_auc_of_the_indexed_items() -> None:
    rng = np.random.default_rng(3)
    truth = rng.random(100) < 0.4
    scores = np.round(rng.random(100), 1)
    statistic = roc_auc_statistic(truth, scores)
    for indices in [np.arange(100), rng.integers(0, 100, 100), np.array([5, 5, 7, 90, 90])]:
        expected = roc_auc(truth[indices], scores[indices])
        assert statistic(indices) == pytest.approx(expected, nan_ok=True)
    assert math.isnan(statistic(np.flatnonzero(~truth)))


# positives score 0.9 0.8 0.6 0.3; negatives 0.7 0.5 0.2
TOY_TRUTH = [1, 1, 1, 1, 0, 0, 0]
TOY_SCORES = [0.9, 0.8, 0.6, 0.3, 0.7, 0.5, 0.2]


@pytest.mark.parametrize(
    "target,expected",
    [
        (0.25, 0.9),  # 1 of 4 positives
        (0.5, 0.8),  # 2 of 4
        (0.7, 0.6),  # 2.8 -> 3 of 4
        (0.75, 0.6),  # exactly 3 of 4
        (0.76, 0.3),  # all 4
        (1.0, 0.3),
    ],
)
def test_threshold_for_sensitivity_on_toy_scores(target: float, expected: float) -> None:
    assert threshold_for_sensitivity(TOY_TRUTH, TOY_SCORES, target) == expected


def test_threshold_for_sensitivity_divides_as_sensitivity_is_reported() -> None:
    # 0.7 * 10 is 7.000000000000001 in floating point, yet 7 of 10 positives is 0.7
    truth = np.ones(10, dtype=bool)
    scores = np.arange(10, 0, -1) / 10  # the k-th highest is (11 - k) / 10
    assert threshold_for_sensitivity(truth, scores, 0.7) == 0.4


@pytest.mark.parametrize("seed", range(5))
def test_threshold_for_sensitivity_is_the_highest_that_reaches_the_target(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.random(200) < 0.3
    scores = np.round(rng.random(200) + 0.3 * truth, 2)
    for target in (0.5, 0.8, 0.9, 0.95, 1.0):
        threshold = threshold_for_sensitivity(truth, scores, target)
        assert np.mean(scores[truth] >= threshold) >= target
        assert np.mean(scores[truth] >= np.nextafter(threshold, np.inf)) < target


@pytest.mark.parametrize(
    "truth,scores,target,message",
    [
        ([0, 0], [0.1, 0.2], 0.9, "no positive"),
        ([1, 0], [0.1, 0.2], 0.0, "target"),
        ([1, 0], [0.1, 0.2], 1.5, "target"),
        ([1, 0], [np.nan, 0.2], 0.5, "NaN"),
    ],
)
def test_threshold_for_sensitivity_rejects(
    truth: list[int], scores: list[float], target: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        threshold_for_sensitivity(truth, scores, target)


def _mean_of(values: np.ndarray) -> Callable[[np.ndarray], float]:
    return lambda indices: float(values[indices].mean())


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_more_items() -> None:
    rng = np.random.default_rng(4)
    widths = []
    for n in (100, 10_000):
        values = rng.random(n)
        low, high = bootstrap_interval(_mean_of(values), n, resamples=500)
        assert low < values.mean() < high
        widths.append(high - low)
    # the width of a mean's interval shrinks as 1/sqrt(n): ten times narrower here
    assert widths[1] < widths[0] / 5


def test_bootstrap_interval_is_deterministic_for_a_seed() -> None:
    values = np.random.default_rng(5).random(50)
    first = bootstrap_interval(_mean_of(values), 50, resamples=200, seed=7)
    assert bootstrap_interval(_mean_of(values), 50, resamples=200, seed=7) == first
    assert bootstrap_interval(_mean_of(values), 50, resamples=200, seed=8) != first


def test_bootstrap_interval_skips_undefined_resamples() -> None:
    truth = np.zeros(20, dtype=bool)
    truth[0] = True  # one positive in 20: about a third of resamples draw none
    flagged = np.random.default_rng(6).random(20) < 0.5

    def specificity_unless_no_positive(indices: np.ndarray) -> float:
        if not truth[indices].any():
            return float("nan")
        return float(np.mean(~flagged[indices][~truth[indices]]))

    low, high = bootstrap_interval(specificity_unless_no_positive, 20, resamples=300)
    assert 0.0 <= low <= high <= 1.0


@pytest.mark.parametrize("n", [0, 10])
def test_bootstrap_interval_is_nan_when_never_defined(n: int) -> None:
    low, high = bootstrap_interval(lambda indices: float("nan"), n, resamples=10)
    assert math.isnan(low) and math.isnan(high)


def test_bootstrap_interval_keeps_each_stratum_size() -> None:
    strata = np.array([True] * 3 + [False] * 17)

    def positives(indices: np.ndarray) -> float:
        return float(strata[indices].sum())

    assert bootstrap_interval(positives, 20, strata=strata, resamples=100) == (3.0, 3.0)
    low, high = bootstrap_interval(positives, 20, resamples=100)
    assert low < 3.0 < high


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"resamples": 0}, "resamples"),
        ({"confidence": 1.0}, "confidence"),
        ({"confidence": 0.0}, "confidence"),
        ({"strata": [0, 1]}, "strata"),
    ],
)
def test_bootstrap_interval_rejects(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bootstrap_interval(lambda indices: 0.0, 5, **kwargs)
