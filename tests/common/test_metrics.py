"""Grading metrics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.metrics import (
    accuracy,
    confusion_matrix,
    quadratic_weighted_kappa,
    referable_probability,
    referable_sensitivity_specificity,
    roc_auc,
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
