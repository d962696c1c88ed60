"""The gradability verdict as data: reasons, what each tells the photographer, the
measures a report carries, the thresholds and the report. No pixels here.

The check itself (:mod:`common.imaging.gradability`) measures photographs with numpy and
Pillow; the API only renders verdicts, so it imports this module and never those.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace

NOT_FUNDUS = "not_fundus"
NO_FIELD_OF_VIEW = "no_field_of_view"
FIELD_OF_VIEW_CUT_OFF = "field_of_view_cut_off"
UNDEREXPOSED = "underexposed"
OVEREXPOSED = "overexposed"
BLURRED = "blurred"
# Machine-readable reasons, in the order a report lists them: the most fundamental first.
REASONS = (NOT_FUNDUS, NO_FIELD_OF_VIEW, FIELD_OF_VIEW_CUT_OFF, UNDEREXPOSED, OVEREXPOSED, BLURRED)
EXPLANATIONS = {
    NOT_FUNDUS: "this does not look like a colour fundus photograph",
    NO_FIELD_OF_VIEW: "no round, bright field of view stands out from a dark surround",
    FIELD_OF_VIEW_CUT_OFF: "much of the field of view lies outside the picture; centre the eye",
    UNDEREXPOSED: "the retina is too dark; raise the flash or dilate the pupil",
    OVEREXPOSED: "the retina is washed out; lower the flash",
    BLURRED: "the retina is out of focus; refocus and keep the eye still",
}
# The raw signals every report carries, whatever its verdict.
MEASURES = (
    "fov_area",  # share of the frame the field of view covers
    "fov_visible",  # field-of-view area over the area of its fitted circle
    "fov_roundness",  # share of its edge, away from the frame, that lies on that circle
    "fov_fill",  # share of its own bounding box it fills: a rectangle ~1, a circle 0.79
    "detail",  # fine dark structure (vessels) in the green channel, relative to its level
    "red_share",  # mean red / (red + green + blue) inside the field of view
    "blue_green_ratio",  # mean blue / mean green inside it
    "brightness",  # mean 8-bit luminance inside it
    "saturated",  # share of near-white pixels inside it
    "focus",  # green Laplacian variance, disc 128 px across / the same at 64 px
)
# Upper bounds of the thresholds that have one: shares, and 8-bit levels.
_UPPER_BOUNDS = {
    "min_fov_area": 1.0,
    "max_fov_area": 1.0,
    "min_fov_visible": 1.0,
    "min_fov_roundness": 1.0,
    "min_fov_fill": 1.0,
    "min_red_share": 1.0,
    "min_brightness": 255.0,
    "max_brightness": 255.0,
    "max_saturated": 1.0,
}
# Lower limits that must stay below their upper ones.
_RANGES = (
    ("min_fov_area", "max_fov_area"),
    ("min_fov_visible", "max_fov_visible"),
    ("min_brightness", "max_brightness"),
)


@dataclass(frozen=True)
class QualityThresholds:
    """Limits on each measure; the defaults let clean photographs of any camera pass."""

    # The comments give what the synthetic evaluation set (lab.quality_samples) measures.
    min_fov_area: float = 0.10  # clean photographs 0.35 up; a disc far too small, 0.05 down
    max_fov_area: float = 0.97  # past it, with no round edge either: no dark surround
    # of the plausible 45° field: a cut top and bottom leaves 0.92, a side cut 0.85 up, a
    # rectangle the retina fills 0.61 (4:3) to 0.64 (square); a misaimed camera 0.5 down
    min_fov_visible: float = 0.55
    max_fov_visible: float = 1.3  # discs up to 1.15; past it the circle is not their edge
    min_fov_roundness: float = 0.5  # that cut leaves 0.65 of the free edge on the circle
    # a field of view filling this share of its own box is a rectangular crop (a circle
    # fills 0.79, one cut top and bottom up to 0.87, a rectangle with rounded corners 0.95 up)
    min_fov_fill: float = 0.88
    # fine structure a rectangle filling the frame must show to be retina: real and
    # synthetic retinas 0.02 to 0.14 (0.025 after a 5 px blur); flat or smooth
    # fundus-coloured pictures 0.003 to 0.01
    min_detail: float = 0.015
    min_red_share: float = 0.40  # fundi 0.5 to 0.7; grey is 0.33
    max_blue_green_ratio: float = 1.0  # fundi 0.2 to 0.8: blue never outweighs green
    min_brightness: float = 20.0  # dark pigmented fundi 41 up; underexposed 5 to 16
    max_brightness: float = 190.0  # light blond fundi up to 160; overexposed 198 up
    max_saturated: float = 0.2  # share of near-white pixels; clean photographs under 0.01
    # focus: sharp 0.5 to 0.8; after a Gaussian blur of sigma 1.5 px on a 512 px photograph
    # 0.34 up, of 2.5 px 0.33 down, of 3 px (the evaluation set's mildest) 0.26 down
    min_focus: float = 0.3

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"quality threshold {item.name} must be a number, not {value!r}")
            upper = _UPPER_BOUNDS.get(item.name, math.inf)
            if not (math.isfinite(value) and 0 <= value <= upper):
                bounds = f"0..{upper:g}" if math.isfinite(upper) else "finite and >= 0"
                raise ValueError(f"quality threshold {item.name} must be {bounds}, not {value!r}")
            object.__setattr__(self, item.name, float(value))
        for low, high in _RANGES:
            if getattr(self, low) >= getattr(self, high):
                raise ValueError(f"quality threshold {low} must be below {high}")

    def with_overrides(self, mapping: Mapping[str, float]) -> QualityThresholds:
        """A copy with some thresholds replaced, as settings and model manifests ask."""
        known = [item.name for item in fields(self)]
        unknown = sorted(set(mapping) - set(known))
        if unknown:
            raise ValueError(
                f"unknown quality thresholds: {', '.join(unknown)} (known: {', '.join(known)})"
            )
        return replace(self, **mapping)

    def as_dict(self) -> dict[str, float]:
        """Every threshold by name, for logs and result records."""
        return asdict(self)


DEFAULT_THRESHOLDS = QualityThresholds()


@dataclass(frozen=True)
class QualityReport:
    """The verdict on one image, with the measures behind it."""

    gradable: bool
    reasons: tuple[str, ...]  # from REASONS, in its order; empty when gradable
    measures: dict[str, float]  # every name in MEASURES, rounded to 4 decimals

    @property
    def message(self) -> str:
        """What to tell the photographer; "" when gradable."""
        if self.gradable:
            return ""
        # a reason recorded by another release may have no explanation here: name it
        explained = (EXPLANATIONS.get(reason, reason) for reason in self.reasons)
        return "recapture: " + "; ".join(explained)
