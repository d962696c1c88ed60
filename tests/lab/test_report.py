"""The evaluation report: what it counts, what it leaves out, and that it is valid JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.screening.grades import GRADE_NAMES
from lab.report import (
    ROC_POINTS,
    choose_operating_point,
    evaluation_report,
    manifest_metrics,
)


def _one_hot(grades: np.ndarray) -> np.ndarray:
    return np.eye(len(GRADE_NAMES))[grades]


def _noisy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Grades and softmax rows that favour the true grade, so every metric is between 0 and 1."""
    rng = np.random.default_rng(seed)
    grades = rng.integers(0, len(GRADE_NAMES), n)
    logits = rng.normal(size=(n, len(GRADE_NAMES)))
    logits[np.arange(n), grades] += 1.5
    probabilities = np.exp(logits)
    return grades, probabilities / probabilities.sum(axis=1, keepdims=True)


def test_perfect_predictions_score_perfectly() -> None:
    grades = np.array([0, 1, 2, 3, 4] * 6)
    report = evaluation_report(grades, _one_hot(grades), referable_threshold=0.5, resamples=50)
    assert report["accuracy"] == 1.0
    assert report["quadratic_weighted_kappa"] == {"value": 1.0, "low": 1.0, "high": 1.0}
    assert report["confusion_matrix"] == (np.eye(5, dtype=int) * 6).tolist()
    assert report["per_grade"] == {
        name: {"precision": 1.0, "recall": 1.0, "support": 6} for name in GRADE_NAMES
    }
    referable = report["referable"]
    for metric in ("sensitivity", "specificity", "auc"):
        assert referable[metric] == {"value": 1.0, "low": 1.0, "high": 1.0}
    assert (referable["positives"], referable["negatives"], referable["prevalence"]) == (
        18,
        12,
        0.6,
    )
    # one-hot scores are 0 or 1: the curve goes straight up, then across
    assert referable["roc"] == {
        "fpr": [0.0, 0.0, 1.0],
        "tpr": [0.0, 1.0, 1.0],
        "thresholds": [None, 1.0, 0.0],
    }


def test_ungradable_images_are_counted_but_never_graded() -> None:
    grades, probabilities = _noisy(40, seed=1)
    gradable = np.arange(40) % 4 != 0
    # an ungradable image has no grade and maybe no usable probabilities
    with_ungradable_junk = np.where(gradable, grades, -1)
    junk_probabilities = np.where(gradable[:, None], probabilities, np.nan)
    report = evaluation_report(
        with_ungradable_junk,
        junk_probabilities,
        referable_threshold=0.5,
        gradable=gradable,
        resamples=100,
    )
    assert (report["images"], report["gradable"], report["ungradable"]) == (40, 30, 10)
    assert report["ungradable_rate"] == 0.25
    only_gradable = evaluation_report(
        grades[gradable], probabilities[gradable], referable_threshold=0.5, resamples=100
    )
    assert only_gradable["ungradable_rate"] == 0.0
    for key in ("accuracy", "quadratic_weighted_kappa", "confusion_matrix", "per_grade"):
        assert report[key] == only_gradable[key]
    assert report["referable"] == only_gradable["referable"]


def test_report_is_strict_json_even_with_undefined_metrics() -> None:
    grades = np.array([0, 1, 1, 0])  # nothing referable: no sensitivity, AUC or curve
    probabilities = _one_hot(np.array([0, 1, 2, 0]))
    report = evaluation_report(grades, probabilities, referable_threshold=0.5, resamples=20)
    assert json.loads(json.dumps(report, allow_nan=False)) == report
    referable = report["referable"]
    assert referable["sensitivity"] == {"value": None, "low": None, "high": None}
    assert referable["auc"]["value"] is None and referable["roc"] is None
    assert referable["specificity"]["value"] == 0.75
    assert report["per_grade"]["Moderate"] == {"precision": 0.0, "recall": None, "support": 0}


def test_report_of_no_gradable_images() -> None:
    grades, probabilities = _noisy(3, seed=2)
    report = evaluation_report(
        grades, probabilities, referable_threshold=0.5, gradable=[False] * 3, resamples=20
    )
    json.dumps(report, allow_nan=False)
    assert (report["gradable"], report["ungradable_rate"], report["accuracy"]) == (0, 1.0, None)


def test_noisy_report_intervals_bracket_their_estimates() -> None:
    grades, probabilities = _noisy(3000, seed=3)
    report = evaluation_report(grades, probabilities, referable_threshold=0.4, resamples=200)
    json.dumps(report, allow_nan=False)
    estimates = [report["quadratic_weighted_kappa"]] + [
        report["referable"][metric] for metric in ("sensitivity", "specificity", "auc")
    ]
    for estimate in estimates:
        assert 0.0 < estimate["low"] <= estimate["value"] <= estimate["high"] < 1.0
    roc = report["referable"]["roc"]
    assert len(roc["fpr"]) == len(roc["tpr"]) == len(roc["thresholds"]) <= ROC_POINTS
    assert (roc["fpr"][0], roc["tpr"][0], roc["fpr"][-1], roc["tpr"][-1]) == (0, 0, 1, 1)
    assert report["bootstrap"] == {"resamples": 200, "confidence": 0.95, "seed": 0}


def test_manifest_metrics_flatten_the_report_under_the_manifest_names() -> None:
    grades, probabilities = _noisy(500, seed=5)
    gradable = np.arange(500) % 10 != 0
    report = evaluation_report(
        grades, probabilities, referable_threshold=0.4, gradable=gradable, resamples=100
    )
    summary = manifest_metrics(report)
    json.dumps(summary, allow_nan=False)
    assert summary["held_out_images"] == 450  # the gradable images the metrics cover
    assert summary["accuracy"] == report["accuracy"]
    assert summary["confusion_matrix"] == report["confusion_matrix"]
    referable = report["referable"]
    expected = {
        "quadratic_weighted_kappa": report["quadratic_weighted_kappa"],
        "referable_sensitivity": referable["sensitivity"],
        "referable_specificity": referable["specificity"],
        "referable_auc": referable["auc"],
    }
    for name, estimate in expected.items():
        assert summary[name] == estimate["value"]
        assert summary["intervals"][name] == [estimate["low"], estimate["high"]]
        assert estimate["low"] < estimate["value"] < estimate["high"]


def test_report_is_deterministic_for_a_seed() -> None:
    grades, probabilities = _noisy(200, seed=4)
    first = evaluation_report(grades, probabilities, referable_threshold=0.5, resamples=100)
    again = evaluation_report(grades, probabilities, referable_threshold=0.5, resamples=100)
    assert first == again


@pytest.mark.parametrize(
    "grades,probabilities,gradable,message",
    [
        ([0, 1], np.full((2, 4), 0.25), None, "probabilities"),
        ([0, 1], np.full((3, 5), 0.2), None, "probabilities"),
        ([0, 1], np.full((2, 5), 0.2), [True], "gradable"),
        ([0, 7], np.full((2, 5), 0.2), None, "beyond"),
    ],
)
def test_report_rejects_mismatched_inputs(
    grades: list[int], probabilities: np.ndarray, gradable: list[bool] | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        evaluation_report(grades, probabilities, referable_threshold=0.5, gradable=gradable)


def test_choose_operating_point_reaches_the_target_as_strictly_as_possible() -> None:
    # P(grade >= 2) is 0.9, 0.8, 0.6, 0.3 for the referable eyes, 0.7, 0.5, 0.2 for the others
    grades = np.array([2, 3, 4, 2, 0, 1, 0])
    referable_probability = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.5, 0.2])
    probabilities = np.zeros((7, 5))
    probabilities[:, 0] = 1 - referable_probability
    probabilities[:, 2] = referable_probability
    assert choose_operating_point(grades, probabilities, 0.75) == {
        "target_sensitivity": 0.75,
        "threshold": pytest.approx(0.6),
        "sensitivity": 0.75,
        "specificity": pytest.approx(2 / 3, abs=1e-4),
    }
