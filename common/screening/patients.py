"""Per-patient screening outcome: the worse eye decides, an ungradable eye means recapture.

A programme acts on people, not photographs. Each eye's grade is its worst gradable
image; the patient's grade is the worse eye. The outcome is ``refer`` when any gradable
image is referable, else ``recapture`` when an eye has images but none could be graded,
else ``rescreen_<N>m``; ``pending`` while any of the patient's images is still being graded.

The programme's grading scheme (:mod:`common.screening.schemes`) names each eye's and the
patient's code and the recall interval N; the ICDR default gives ``rescreen_12m``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from common.db.tables import PENDING_IMAGE_STATES
from common.screening.schemes import DEFAULT_SCHEME, GradingScheme

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
    code: str | None = None  # the scheme's code; None while pending


@dataclass(frozen=True)
class PatientOutcome:
    """What the programme does next for one patient."""

    patient_id: str
    outcome: str
    grade: int | None
    eyes: dict[str, EyeOutcome]
    scheme: GradingScheme = DEFAULT_SCHEME
    code: str | None = None  # the worse eye's code, the ungradable code, or None if pending
    recall_months: int | None = None  # only for a rescreen


def roll_up(
    patient_id: str,
    images: Iterable[EyeImage],
    scheme: GradingScheme = DEFAULT_SCHEME,
    previous_code: str | None = None,
) -> PatientOutcome:
    """Apply the screening rules to one patient's images under a programme's scheme.

    ``previous_code`` is the patient's code at their previous screening in the programme,
    which a ``<code>_repeat`` recall setting looks at.
    """
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
        return PatientOutcome(patient_id, "pending", grade, eyes, scheme)
    for eye in eyes.values():
        eye.code = (
            scheme.ungradable_code
            if eye.grade is None
            else scheme.code_for(eye.grade, eye.referable)
        )
    graded = [eye.code for eye in eyes.values() if eye.grade is not None and eye.code]
    worst = max(graded, key=scheme.severity) if graded else None
    if worst is not None and scheme.is_referable(worst):
        return PatientOutcome(patient_id, "refer", grade, eyes, scheme, worst)
    if worst is None or len(graded) < len(eyes):
        return PatientOutcome(patient_id, "recapture", grade, eyes, scheme, scheme.ungradable_code)
    months = scheme.recall_months(worst, previous_code)
    return PatientOutcome(patient_id, f"rescreen_{months}m", grade, eyes, scheme, worst, months)
