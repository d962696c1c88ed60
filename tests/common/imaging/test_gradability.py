"""The quality check: each defect gives its reason, clean photographs of any camera pass."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image, ImageFilter

from common.imaging.gradability import assess_quality
from common.screening.quality import (
    BLURRED,
    EXPLANATIONS,
    FIELD_OF_VIEW_CUT_OFF,
    MEASURES,
    NO_FIELD_OF_VIEW,
    NOT_FUNDUS,
    OVEREXPOSED,
    REASONS,
    UNDEREXPOSED,
    QualityReport,
    QualityThresholds,
)
from lab.quality_samples import KINDS, make_sample
from lab.synthetic import GRADES, generate_fundus

GOOD_KINDS = [kind for kind, (expected, _) in KINDS.items() if expected is None]
DEGRADED_KINDS = [kind for kind, (expected, _) in KINDS.items() if expected is not None]
FUNDUS = generate_fundus(3, 21, 640)


def _cropped_to_the_disc(image: Image.Image, share: float) -> Image.Image:
    side = round(image.width * share)
    offset = (image.width - side) // 2
    return image.crop((offset, offset, offset + side, offset + side))


def _on_black(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    canvas = Image.new("RGB", size)
    canvas.paste(image, ((size[0] - image.width) // 2, (size[1] - image.height) // 2))
    return canvas


@pytest.mark.parametrize("kind", DEGRADED_KINDS)
@pytest.mark.parametrize("index", [0, 1])
def test_each_degraded_kind_is_ungradable_for_its_reason(kind: str, index: int) -> None:
    sample = make_sample(kind, index, seed=7)
    report = assess_quality(sample.image)
    assert not report.gradable
    assert sample.expected_reason in report.reasons


def test_every_reason_has_a_degraded_kind_and_an_explanation() -> None:
    assert {expected for expected, _ in KINDS.values()} - {None} == set(REASONS)
    assert set(EXPLANATIONS) == set(REASONS)


@pytest.mark.parametrize(
    "name,image,reason",
    [
        ("black frame", Image.new("RGB", (600, 600)), UNDEREXPOSED),
        ("red-free (grey) photograph", generate_fundus(0, 3, 512).convert("L"), NOT_FUNDUS),
        ("fundus-coloured, edge to edge", Image.new("RGB", (300, 300), (200, 90, 40)), NOT_FUNDUS),
        (
            "a rectangle on black",
            _on_black(Image.new("RGB", (400, 250), (200, 90, 40)), (512, 512)),
            NO_FIELD_OF_VIEW,
        ),
    ],
)
def test_hand_made_pictures_get_their_reason(name: str, image: Image.Image, reason: str) -> None:
    assert assess_quality(image).reasons == (reason,), name


@pytest.mark.parametrize("kind", GOOD_KINDS)
@pytest.mark.parametrize("index", [0, 1])
def test_clean_photographs_of_every_kind_are_gradable(kind: str, index: int) -> None:
    report = assess_quality(make_sample(kind, index, seed=7).image)
    assert report.gradable, report
    assert report.reasons == ()


@pytest.mark.parametrize(
    "name,image",
    [
        ("cropped so only the corners are dark", _cropped_to_the_disc(FUNDUS, 0.75)),
        ("the middle of a disc: a rectangle the retina fills", _cropped_to_the_disc(FUNDUS, 0.6)),
        ("a 16:9 frame", _on_black(FUNDUS, (FUNDUS.width * 16 // 9, FUNDUS.height))),
        ("a palette PNG", FUNDUS.convert("P", palette=Image.Palette.ADAPTIVE)),
    ],
)
def test_other_framings_and_modes_are_gradable(name: str, image: Image.Image) -> None:
    assert assess_quality(image).gradable, name


@pytest.mark.parametrize("grade", GRADES)
@pytest.mark.parametrize("size", [565, 768])
def test_every_grade_is_gradable(grade: int, size: int) -> None:
    assert assess_quality(generate_fundus(grade, 40 + grade, size)).gradable


def _veiled(image: Image.Image) -> Image.Image:
    """A pale, low-contrast haze over the retina, the surround left black."""
    haze = Image.blend(image, Image.new("RGB", image.size, (200, 160, 120)), 0.4)
    return Image.composite(haze, image, image.convert("L").point(lambda v: 255 if v > 20 else 0))


@pytest.mark.parametrize(
    "name,change",
    [
        ("3x the resolution", lambda im: im.resize((1536, 1536), Image.Resampling.BICUBIC)),
        ("0.6x the exposure", lambda im: im.point(lambda v: int(v * 0.6))),
        ("a pale haze", _veiled),
    ],
)
def test_focus_depends_on_neither_resolution_nor_exposure_nor_contrast(
    name: str, change: Callable[[Image.Image], Image.Image]
) -> None:
    image = generate_fundus(2, 11, 512)
    before = assess_quality(image).measures["focus"]
    after = assess_quality(change(image)).measures["focus"]
    assert after == pytest.approx(before, rel=0.1), name


@pytest.mark.parametrize(
    "sigma,blurred",
    [(0.0, False), (1.0, False), (1.5, False), (3.0, True), (4.5, True)],
)
def test_blur_fails_between_sigma_1_5_and_3_px_at_512_px(sigma: float, blurred: bool) -> None:
    image = generate_fundus(1, 12, 512).filter(ImageFilter.GaussianBlur(sigma))
    assert (BLURRED in assess_quality(image).reasons) is blurred, sigma


def _rectangle_of(image: Image.Image, aspect: float) -> Image.Image:
    """The middle of ``image``'s disc that a camera cropping to ``aspect`` keeps, at 512 tall."""
    height = round(image.width * 0.6 * math.sqrt(2) / math.hypot(aspect, 1.0))
    width = round(height * aspect)
    left, top = (image.width - width) // 2, (image.height - height) // 2
    crop = image.crop((left, top, left + width, top + height))
    return crop.resize((round(512 * aspect), 512), Image.Resampling.BILINEAR)


@pytest.mark.parametrize(
    "name,image,blurred",
    [
        ("a sharp 4:3 crop", _rectangle_of(FUNDUS, 4 / 3), False),
        (
            "a 4:3 crop, 1 px defocus",
            _rectangle_of(FUNDUS, 4 / 3).filter(ImageFilter.GaussianBlur(1)),
            False,
        ),
        (
            "a 4:3 crop, 3 px defocus",
            _rectangle_of(FUNDUS, 4 / 3).filter(ImageFilter.GaussianBlur(3)),
            True,
        ),
        (
            "a square crop, 3 px defocus",
            _rectangle_of(FUNDUS, 1.0).filter(ImageFilter.GaussianBlur(3)),
            True,
        ),
        ("generated rectangle_blurred 8 (passed)", make_sample("rectangle_blurred", 8).image, True),
        (
            "generated rectangle_blurred 20 (passed)",
            make_sample("rectangle_blurred", 20).image,
            True,
        ),
        (
            "generated rectangle_blurred 36 (passed)",
            make_sample("rectangle_blurred", 36).image,
            True,
        ),
    ],
)
def test_a_blurred_rectangular_crop_is_refused_as_blurred(
    name: str, image: Image.Image, blurred: bool
) -> None:
    # a frame-filling crop's focus is measured at its own extent, not only at the scale of
    # the circle around it, where a 3 px defocus at 512 passed for sharp
    report = assess_quality(image)
    assert report.measures["fov_fill"] >= 0.88, name
    assert report.reasons == ((BLURRED,) if blurred else ()), (name, report)


def test_a_cut_off_disc_is_framed_and_one_off_the_frame_is_cut_off() -> None:
    cut = assess_quality(make_sample("cut_off", 0).image).measures
    off = assess_quality(make_sample("off_centre", 0).image).measures
    assert 0.9 < cut["fov_visible"] and cut["fov_roundness"] > 0.6
    assert off["fov_visible"] < 0.5 and off["fov_roundness"] > 0.9


def test_report_carries_every_measure_as_a_finite_number() -> None:
    for image in (generate_fundus(1, 5, 512), Image.new("RGB", (64, 64), (30, 200, 40))):
        measures = assess_quality(image).measures
        assert tuple(measures) == MEASURES
        assert all(isinstance(v, float) and math.isfinite(v) for v in measures.values())


def test_reasons_come_in_the_stable_order() -> None:
    pixels = np.asarray(make_sample("off_centre", 3).image, dtype=np.float32)
    dark = Image.fromarray((pixels * 0.1).astype(np.uint8)).resize((256, 256))
    reasons = assess_quality(dark).reasons
    assert reasons == tuple(r for r in REASONS if r in reasons)
    assert {FIELD_OF_VIEW_CUT_OFF, UNDEREXPOSED} <= set(reasons)


@pytest.mark.parametrize(
    "reasons,message",
    [
        ((), ""),
        ((BLURRED,), "recapture: the retina is out of focus; refocus and keep the eye still"),
        (
            (UNDEREXPOSED, BLURRED),
            f"recapture: {EXPLANATIONS[UNDEREXPOSED]}; {EXPLANATIONS[BLURRED]}",
        ),
        (("glare",), "recapture: glare"),
    ],
)
def test_message_tells_the_photographer_what_to_do(reasons: tuple[str, ...], message: str) -> None:
    report = QualityReport(gradable=not reasons, reasons=reasons, measures={})
    assert report.message == message


@pytest.mark.parametrize(
    "overrides,reason",
    [
        ({"min_focus": 1000.0}, BLURRED),
        ({"max_brightness": 30.0}, OVEREXPOSED),
        ({"min_brightness": 200.0, "max_brightness": 255}, UNDEREXPOSED),
        ({"min_fov_visible": 1.0}, FIELD_OF_VIEW_CUT_OFF),
    ],
)
def test_overridden_thresholds_change_the_verdict(overrides: dict[str, float], reason: str) -> None:
    image = make_sample("cut_off", 0).image
    assert assess_quality(image).gradable
    thresholds = QualityThresholds().with_overrides(overrides)
    assert reason in assess_quality(image, thresholds).reasons


def test_overrides_replace_only_what_they_name() -> None:
    defaults = QualityThresholds()
    changed = defaults.with_overrides({"min_focus": 0.3})
    assert changed.min_focus == 0.3
    assert {k: v for k, v in changed.as_dict().items() if k != "min_focus"} == {
        k: v for k, v in defaults.as_dict().items() if k != "min_focus"
    }
    assert QualityThresholds(**defaults.as_dict()) == defaults


@pytest.mark.parametrize(
    "overrides,named",
    [
        ({"min_focuss": 0.3, "blur": 1.0}, "blur, min_focuss"),
        ({"min_focus": -1.0}, "min_focus"),
        ({"min_focus": float("nan")}, "min_focus"),
        ({"min_focus": "0.3"}, "min_focus"),
        ({"min_focus": True}, "min_focus"),
        ({"max_saturated": 1.5}, "max_saturated"),
        ({"max_brightness": 300.0}, "max_brightness"),
        ({"min_brightness": 100.0, "max_brightness": 90.0}, "min_brightness"),
        ({"min_fov_visible": 0.9, "max_fov_visible": 0.8}, "min_fov_visible"),
    ],
)
def test_bad_overrides_are_refused_by_name(overrides: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        QualityThresholds().with_overrides(overrides)


def test_samples_are_deterministic() -> None:
    first, second = make_sample("pigmented", 4, seed=3), make_sample("pigmented", 4, seed=3)
    assert first.image.tobytes() == second.image.tobytes()
    assert first.image.tobytes() != make_sample("pigmented", 5, seed=3).image.tobytes()


@pytest.mark.parametrize("index", [7, 14, 16, 23])
def test_a_white_page_of_print_is_not_fundus_rather_than_overexposed(index: int) -> None:
    # these documents (seed 0) are washed out and pale; their print's detail says no retina
    assert assess_quality(make_sample("document", index).image).reasons == (NOT_FUNDUS,)
