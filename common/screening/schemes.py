"""Grading schemes: the codes a programme reports and the recall interval each code earns.

The model grades on the ICDR scale (:mod:`common.screening.grades`); a programme may
report those grades as they are (``icdr``) or as England's NHS Diabetic Eye Screening
Programme codes (``nhs-desp``: R0, R1, R2, R3A, U). ICDR does not map one-to-one onto R
codes, so the mapping from each ICDR grade is part of the programme's scheme, with a
default chosen for sensitivity (docs/domain.md says why). The model never sees the
macula, so maculopathy is always reported as not assessed, never as M0.

The referral decision stays the model's: an eye is referable when P(grade >= 2) passed
the model's threshold. Before mapping, an eye's grade is brought into line with that
decision (a referable eye counts as at least moderate, a non-referable one as at most
mild), so that a code and the action it implies never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from common.screening.grades import N_GRADES, REFERABLE_MIN_GRADE

ICDR = "icdr"
NHS_DESP = "nhs-desp"
SCHEMES = (ICDR, NHS_DESP)
MACULOPATHY_NOT_ASSESSED = "not_assessed"
# The suffix of a recall key that applies when the patient's previous screening in the
# programme ended with the same code (NHS DESP since 2023: two consecutive R0 -> 24 months).
REPEAT_SUFFIX = "_repeat"
MAX_RECALL_MONTHS = 120


@dataclass(frozen=True)
class SchemeVocabulary:
    """What a scheme can say: its codes from least to most severe, which refer, and U."""

    codes: tuple[str, ...]
    referable: frozenset[str]
    ungradable: str
    default_mapping: tuple[str, ...]
    default_recall: Mapping[str, int]


VOCABULARIES: Mapping[str, SchemeVocabulary] = MappingProxyType(
    {
        ICDR: SchemeVocabulary(
            codes=("ICDR0", "ICDR1", "ICDR2", "ICDR3", "ICDR4"),
            referable=frozenset({"ICDR2", "ICDR3", "ICDR4"}),
            ungradable="ungradable",
            default_mapping=("ICDR0", "ICDR1", "ICDR2", "ICDR3", "ICDR4"),
            default_recall=MappingProxyType({"icdr0": 12, "icdr1": 12}),
        ),
        # R3S (stable after treatment) needs a treatment history the model has not got, so
        # no grade maps to it; moderate maps to R2 so that every eye the model refers is
        # referred (see docs/domain.md).
        NHS_DESP: SchemeVocabulary(
            codes=("R0", "R1", "R2", "R3A"),
            referable=frozenset({"R2", "R3A"}),
            ungradable="U",
            default_mapping=("R0", "R1", "R2", "R2", "R3A"),
            default_recall=MappingProxyType({"r0": 12, "r1": 12, "r0_repeat": 24}),
        ),
    }
)


class SchemeError(ValueError):
    """A scheme, mapping or recall setting that cannot be used; the message says why."""


@dataclass(frozen=True)
class GradingScheme:
    """A programme's scheme: its name, ICDR grade -> code mapping and recall months."""

    name: str = ICDR
    mapping: tuple[str, ...] = VOCABULARIES[ICDR].default_mapping
    recall: Mapping[str, int] = field(
        default_factory=lambda: dict(VOCABULARIES[ICDR].default_recall)
    )

    @property
    def vocabulary(self) -> SchemeVocabulary:
        """The codes this scheme can report."""
        return VOCABULARIES[self.name]

    @property
    def ungradable_code(self) -> str:
        """The code of an eye with images of which none could be graded."""
        return self.vocabulary.ungradable

    def code_for(self, grade: int, referable: bool) -> str:
        """The code of a graded eye: its grade, aligned with the referral decision, mapped."""
        aligned = (
            max(grade, REFERABLE_MIN_GRADE) if referable else min(grade, REFERABLE_MIN_GRADE - 1)
        )
        return self.mapping[aligned]

    def is_referable(self, code: str) -> bool:
        """Whether a code sends the patient to an ophthalmologist."""
        return code in self.vocabulary.referable

    def severity(self, code: str) -> int:
        """A code's rank, to choose the worse of two eyes."""
        return self.vocabulary.codes.index(code)

    def recall_months(self, code: str, previous_code: str | None) -> int:
        """Months until the next screening for a non-referable code.

        A ``<code>_repeat`` setting applies when the previous screening ended in the same
        code; otherwise the code's own setting.
        """
        key = code.lower()
        if previous_code == code and key + REPEAT_SUFFIX in self.recall:
            return self.recall[key + REPEAT_SUFFIX]
        return self.recall[key]


DEFAULT_SCHEME = GradingScheme()


def recall_keys(name: str) -> tuple[str, ...]:
    """The recall settings a scheme accepts: each non-referable code, and its repeat."""
    vocabulary = VOCABULARIES[name]
    plain = [code.lower() for code in vocabulary.codes if code not in vocabulary.referable]
    return (*plain, *(key + REPEAT_SUFFIX for key in plain))


def build_scheme(
    name: str,
    mapping: Mapping[int, str] | None = None,
    recall: Mapping[str, int] | None = None,
) -> GradingScheme:
    """A checked scheme from a name, mapping changes and recall changes over its defaults.

    The mapping must never give a worse grade a milder code; no DR must not refer and
    proliferative DR must. A programme may map moderate to R1, accepting that the model's
    referrals of moderate eyes become 12-month recalls.
    """
    if name not in VOCABULARIES:
        raise SchemeError(f"unknown scheme {name!r}; choose one of {', '.join(SCHEMES)}")
    vocabulary = VOCABULARIES[name]
    codes = list(vocabulary.default_mapping)
    for grade, code in (mapping or {}).items():
        if grade not in range(N_GRADES):
            raise SchemeError(f"grade {grade} is not an ICDR grade (0-{N_GRADES - 1})")
        if code not in vocabulary.codes:
            raise SchemeError(
                f"{code!r} is not a {name} code; choose one of {', '.join(vocabulary.codes)}"
            )
        codes[grade] = code
    ranks = [vocabulary.codes.index(code) for code in codes]
    if ranks != sorted(ranks):
        raise SchemeError("the mapping must not give a worse grade a milder code")
    if codes[0] in vocabulary.referable:
        raise SchemeError("grade 0 cannot map to a referable code")
    if codes[N_GRADES - 1] not in vocabulary.referable:
        raise SchemeError("proliferative DR must map to a referable code")
    allowed = recall_keys(name)
    months = dict(vocabulary.default_recall)
    for key, value in (recall or {}).items():
        if key not in allowed:
            raise SchemeError(f"unknown recall {key!r} for {name}; use {', '.join(allowed)}")
        if not 1 <= value <= MAX_RECALL_MONTHS:
            raise SchemeError(f"recall {key} must be 1 to {MAX_RECALL_MONTHS} months")
        months[key] = value
    return GradingScheme(name=name, mapping=tuple(codes), recall=MappingProxyType(months))


def parse_pairs(text: str, what: str) -> dict[str, str]:
    """``a=1,b=2`` as a dict, for the admin command's ``--recall`` and ``--map``."""
    pairs: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep or not key.strip() or not value.strip():
            raise SchemeError(f"{what} must look like key=value,key=value; got {part.strip()!r}")
        pairs[key.strip().lower()] = value.strip()
    return pairs


def scheme_from_row(
    name: str, mapping: list[str] | None, recall: dict[str, int] | None
) -> GradingScheme:
    """The scheme stored for a programme (codes by grade, recall months)."""
    return build_scheme(
        name,
        dict(enumerate(mapping)) if mapping else None,
        recall,
    )
