"""The ICDR scale: five grades, their names, and where referral starts. Defined here once."""

from __future__ import annotations

GRADE_NAMES = ("No DR", "Mild", "Moderate", "Severe", "Proliferative")
N_GRADES = len(GRADE_NAMES)
GRADES = tuple(range(N_GRADES))
# Referable diabetic retinopathy: moderate non-proliferative or worse.
REFERABLE_MIN_GRADE = 2
