"""Per-patient screening outcome: the worse eye decides, an ungradable eye means recapture.

A programme acts on people, not photographs. Each eye's grade is its worst gradable
image; the patient's grade is the worse eye. The outcome is ``refer`` when any gradable
image is referable, else ``recapture`` when an eye has images but none could be graded,
else ``rescreen_12m``; ``pending`` while any of the patient's images is still being graded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from common.db.tables import PENDING_IMAGE_STATES

PENDING = frozenset(state.value for state in PENDING_IMAGE_STATES)
UNSPECIFIED_EYE = "unspecified"


@dataclass(frozen=True)
class EyeImage:
    """One image of a patient, as the roll-up needs it."""

    image_id: str
    laterality: str | None
    state: str
    grade: int | None
    referable: bool | None


@dataclass
class EyeOutcome:
    """The worst gradable image of one eye."""

    grade: int | None = None
    referable: bool = False
    gradable_images: int = 0
    images: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PatientOutcome:
    """What the programme does next for one patient."""

    patient_id: str
    outcome: str
    grade: int | None
    eyes: dict[str, EyeOutcome]


def roll_up(patient_id: str, images: Iterable[EyeImage]) -> PatientOutcome:
    """Apply the screening rules to one patient's images."""
    eyes: dict[str, EyeOutcome] = {}
    pending = False
    for image in images:
        eye = eyes.setdefault(image.laterality or UNSPECIFIED_EYE, EyeOutcome())
        eye.images.append(image.image_id)
        if image.state in PENDING:
            pending = True
        if image.state == "graded" and image.grade is not None:
            eye.gradable_images += 1
            eye.grade = image.grade if eye.grade is None else max(eye.grade, image.grade)
            eye.referable = eye.referable or bool(image.referable)
    grades = [eye.grade for eye in eyes.values() if eye.grade is not None]
    grade = max(grades) if grades else None
    if pending:
        outcome = "pending"
    elif any(eye.referable for eye in eyes.values()):
        outcome = "refer"
    elif any(eye.gradable_images == 0 for eye in eyes.values()):
        outcome = "recapture"
    else:
        outcome = "rescreen_12m"
    return PatientOutcome(patient_id, outcome, grade, eyes)
