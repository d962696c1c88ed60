"""The per-patient roll-up rules, table-driven."""

from __future__ import annotations

import pytest

from common.screening.patients import EyeImage, roll_up


def _img(side: str | None, state: str, grade: int | None = None, ref: bool | None = None):
    return EyeImage(f"{side}-{state}-{grade}", side, state, grade, ref)


@pytest.mark.parametrize(
    ("images", "outcome", "grade", "eye_grades"),
    [
        (
            [_img("L", "graded", 0, False), _img("R", "graded", 1, False)],
            "rescreen_12m",
            1,
            {"L": 0, "R": 1},
        ),
        (
            [_img("L", "graded", 0, False), _img("R", "graded", 3, True)],
            "refer",
            3,
            {"L": 0, "R": 3},
        ),
        # The worst image of an eye decides that eye.
        ([_img("L", "graded", 1, False), _img("L", "graded", 2, True)], "refer", 2, {"L": 2}),
        # An eye with images but none gradable: recapture.
        (
            [_img("L", "graded", 0, False), _img("R", "ungradable")],
            "recapture",
            0,
            {"L": 0, "R": None},
        ),
        ([_img("L", "failed"), _img("R", "graded", 1, False)], "recapture", 1, {"L": None, "R": 1}),
        # An ungradable second image of an eye that has a gradable one does not matter.
        (
            [_img("L", "graded", 0, False), _img("L", "ungradable"), _img("R", "graded", 0, False)],
            "rescreen_12m",
            0,
            {"L": 0, "R": 0},
        ),
        # Referable elsewhere outranks a missing eye.
        ([_img("L", "graded", 4, True), _img("R", "ungradable")], "refer", 4, {"L": 4, "R": None}),
        # Anything still being graded keeps the outcome open.
        ([_img("L", "graded", 3, True), _img("R", "queued")], "pending", 3, {"L": 3, "R": None}),
        # The referable flag (threshold on P(grade >= 2)) decides, not the argmax alone.
        ([_img("L", "graded", 1, True)], "refer", 1, {"L": 1}),
        ([_img(None, "graded", 0, False)], "rescreen_12m", 0, {"unspecified": 0}),
    ],
)
def test_roll_up(images: list, outcome: str, grade: int | None, eye_grades: dict) -> None:
    result = roll_up("P1", images)
    assert result.outcome == outcome
    assert result.grade == grade
    assert {side: eye.grade for side, eye in result.eyes.items()} == eye_grades
