"""Grading schemes: the ICDR to NHS DESP mapping, its checks, and the codes and recall
intervals a patient's roll-up gets from them."""

from __future__ import annotations

import pytest

from common.screening.patients import EyeImage, roll_up
from common.screening.schemes import (
    DEFAULT_SCHEME,
    ICDR,
    NHS_DESP,
    SchemeError,
    build_scheme,
    parse_pairs,
    recall_keys,
)

NHS = build_scheme(NHS_DESP)


def _eye(side: str, grade: int | None, referable: bool | None, state: str = "graded") -> EyeImage:
    return EyeImage(f"{side}-{grade}", side, state, grade, referable)


@pytest.mark.parametrize(
    ("grade", "referable", "code"),
    [
        (0, False, "R0"),
        (1, False, "R1"),
        (2, True, "R2"),
        (3, True, "R2"),
        (4, True, "R3A"),
        # the model's threshold referred an eye whose argmax was mild: at least R2
        (1, True, "R2"),
        # the threshold did not refer an argmax-moderate eye: at most R1
        (2, False, "R1"),
    ],
)
def test_default_nhs_mapping_follows_the_referral_decision(
    grade: int, referable: bool, code: str
) -> None:
    assert NHS.code_for(grade, referable) == code
    assert NHS.is_referable(code) == referable


@pytest.mark.parametrize(
    ("eyes", "outcome", "code", "recall", "previous"),
    [
        ([_eye("L", 0, False), _eye("R", 0, False)], "rescreen_12m", "R0", 12, None),
        ([_eye("L", 0, False), _eye("R", 0, False)], "rescreen_24m", "R0", 24, "R0"),
        ([_eye("L", 0, False), _eye("R", 1, False)], "rescreen_12m", "R1", 12, "R1"),
        ([_eye("L", 0, False), _eye("R", 4, True)], "refer", "R3A", None, None),
        ([_eye("L", 0, False), _eye("R", None, None)], "recapture", "U", None, None),
        ([_eye("L", 4, True), _eye("R", None, None)], "refer", "R3A", None, None),
        ([_eye("L", 0, False), _eye("R", None, None, "queued")], "pending", None, None, None),
    ],
)
def test_roll_up_names_the_schemes_code_and_recall(
    eyes: list[EyeImage], outcome: str, code: str | None, recall: int | None, previous: str | None
) -> None:
    result = roll_up("P1", eyes, NHS, previous)
    assert (result.outcome, result.code, result.recall_months) == (outcome, code, recall)


def test_icdr_default_keeps_the_old_outcomes() -> None:
    assert DEFAULT_SCHEME.name == ICDR
    plain = roll_up("P", [_eye("L", 1, False), _eye("R", 0, False)], previous_code="ICDR1")
    assert (plain.outcome, plain.code, plain.recall_months) == ("rescreen_12m", "ICDR1", 12)
    ungraded = roll_up("P", [_eye("L", 1, False), _eye("R", None, None)])
    assert (ungraded.outcome, ungraded.code) == ("recapture", "ungradable")
    assert ungraded.eyes["R"].code == "ungradable"


def test_a_programme_may_map_moderate_to_r1_and_set_recall() -> None:
    scheme = build_scheme(NHS_DESP, {2: "R1"}, {"r0": 24, "r1": 6})
    assert scheme.mapping == ("R0", "R1", "R1", "R2", "R3A")
    moderate = roll_up("P", [_eye("L", 2, True), _eye("R", 0, False)], scheme)
    assert (moderate.outcome, moderate.code, moderate.recall_months) == ("rescreen_6m", "R1", 6)
    assert scheme.recall_months("R0", None) == 24
    assert scheme.recall_months("R0", "R0") == 24, "r0_repeat keeps its default of 24"


@pytest.mark.parametrize(
    ("mapping", "recall", "message"),
    [
        ({2: "R4"}, None, "not a nhs-desp code"),
        ({7: "R1"}, None, "not an ICDR grade"),
        ({1: "R2", 2: "R1"}, None, "milder code"),
        ({0: "R2", 1: "R2"}, None, "grade 0"),
        ({4: "R1", 3: "R1", 2: "R1"}, None, "proliferative"),
        (None, {"r2": 12}, "unknown recall"),
        (None, {"r0": 0}, "1 to 120"),
    ],
)
def test_bad_schemes_are_refused_with_a_reason(
    mapping: dict[int, str] | None, recall: dict[str, int] | None, message: str
) -> None:
    with pytest.raises(SchemeError, match=message):
        build_scheme(NHS_DESP, mapping, recall)


def test_unknown_scheme_and_pairs() -> None:
    with pytest.raises(SchemeError, match="unknown scheme"):
        build_scheme("etdrs")
    assert parse_pairs("R0=24, r1=12", "--recall") == {"r0": "24", "r1": "12"}
    with pytest.raises(SchemeError, match="key=value"):
        parse_pairs("r0", "--recall")
    assert recall_keys(NHS_DESP) == ("r0", "r1", "r0_repeat", "r1_repeat")
