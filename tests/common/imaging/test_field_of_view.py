"""The field-of-view detector: robust circles, rectangular crops, bars, and real photographs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from common.imaging.decode import field_of_view_box
from common.imaging.field_of_view import CIRCLE, RECTANGLE, edge_bars, find_field_of_view
from common.imaging.gradability import assess_quality
from common.screening.quality import BLURRED, UNDEREXPOSED
from lab.synthetic import generate_fundus
from tests.support import DATA_DIR

REAL = DATA_DIR / "real"
CHASE = sorted(REAL.glob("CHASEDB1_*.png"))


def _disc(size: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    """A bright disc (value 120) on black, as a brightness plane."""
    yy, xx = np.mgrid[0 : size[1], 0 : size[0]]
    return np.where(np.hypot(xx - centre[0], yy - centre[1]) <= radius, 120, 0).astype(np.uint8)


def test_the_robust_fit_recovers_a_circle_through_notches_chords_and_text() -> None:
    value = _disc((160, 150), (82.0, 74.0), 60.0)
    value[:23, :] = value[-25:, :] = 0  # a 45° camera's chords, 0.85 r from the centre
    share_left = float((value > 0).sum()) / (math.pi * 60.0**2)
    image = Image.fromarray(value)
    draw = ImageDraw.Draw(image)
    draw.polygon([(142, 74), (132, 66), (132, 82)], fill=0)  # a notch in the rim
    draw.rectangle([20, 105, 70, 128], fill=200)  # a caption burnt in over the rim
    draw.rectangle([120, 20, 150, 40], fill=200)  # a logo touching the rim
    fov = find_field_of_view(np.asarray(image), 20)
    assert fov.shape == CIRCLE
    assert fov.radius == pytest.approx(60.0, rel=0.03)
    assert fov.roundness >= 0.5
    # visible is measured against that circle: the chords' share, the text adding a little
    assert share_left < 0.95
    assert share_left - 0.02 < fov.visible < share_left + 0.15


def test_a_rectangle_the_retina_fills_is_measured_against_the_circle_around_it() -> None:
    value = np.full((120, 160), 110, dtype=np.uint8)
    fov = find_field_of_view(value, 20)
    assert fov.shape == RECTANGLE
    assert fov.radius == pytest.approx(100.0)  # half the 4:3 frame's diagonal
    assert fov.visible == pytest.approx(120 * 160 / (math.pi * 100.0**2), rel=1e-3)


def _retina_crop(image: Image.Image, aspect: float = 4 / 3) -> Image.Image:
    """A rectangle inscribed in the disc: what a camera that crops to a rectangle exports."""
    left, top, right, bottom = field_of_view_box(image)
    cx, cy = (left + right) / 2, (top + bottom) / 2
    half_h = 0.97 * min(right - left, bottom - top) / 2 / math.hypot(aspect, 1.0)
    half_w = aspect * half_h
    return image.crop(
        (round(cx - half_w), round(cy - half_h), round(cx + half_w), round(cy + half_h))
    )


def test_a_rectangular_crop_is_gradable_and_its_box_is_the_frame_minus_black_borders() -> None:
    crop = _retina_crop(generate_fundus(2, 31, 768))
    canvas = Image.new("RGB", (crop.width + 60, crop.height + 30))
    canvas.paste(crop, (40, 10))
    assert assess_quality(canvas).gradable
    box = field_of_view_box(canvas)
    expected = (40, 10, 40 + crop.width, 10 + crop.height)
    assert all(abs(a - b) <= 3 for a, b in zip(box, expected, strict=True)), (box, expected)


@pytest.mark.parametrize("edge", ["top", "bottom", "left", "right"])
def test_a_white_bar_along_an_edge_is_left_out_of_the_crop(edge: str) -> None:
    crop = _retina_crop(generate_fundus(1, 32, 768)).filter(ImageFilter.GaussianBlur(0.8))
    width, height = crop.size
    bar = {
        "top": (0, 0, width, 40),
        "bottom": (0, height - 40, width, height),
        "left": (0, 0, 40, height),
        "right": (width - 40, 0, width, height),
    }[edge]
    ImageDraw.Draw(crop).rectangle(bar, fill=(248, 248, 246))
    report = assess_quality(crop)
    assert report.gradable, report
    left, top, right, bottom = field_of_view_box(crop)
    scale = 3  # a pixel of the 256 px copy the box is found on
    assert {
        "top": top >= 40 - scale,
        "bottom": bottom <= height - 40 + scale,
        "left": left >= 40 - scale,
        "right": right <= width - 40 + scale,
    }[edge], (edge, (left, top, right, bottom))


def test_an_over_exposed_retina_is_not_a_bar() -> None:
    pixels = np.full((120, 160, 3), (250, 240, 225), dtype=np.uint8)
    assert edge_bars(pixels) == (0, 0, 160, 120)


def test_a_flat_fundus_coloured_picture_is_still_no_retina() -> None:
    flat = Image.new("RGB", (400, 300), (200, 90, 40))
    assert assess_quality(flat).reasons == ("not_fundus",)


@pytest.fixture(params=CHASE, ids=[path.stem for path in CHASE])
def chase(request: pytest.FixtureRequest) -> Image.Image:
    """A real CHASE_DB1 photograph (CC BY 4.0, tests/data/real/ATTRIBUTION.md)."""
    return Image.open(request.param).convert("RGB")


def test_the_committed_real_photographs_are_there() -> None:
    assert len(CHASE) == 2


def test_a_real_photograph_is_gradable_and_cropped_to_its_disc(chase: Image.Image) -> None:
    assert assess_quality(chase).gradable
    left, top, right, bottom = field_of_view_box(chase)
    # the disc is as high as the frame and nearly round: the box is square-ish, inside it
    assert 0 <= left < right <= chase.width and 0 <= top < bottom <= chase.height
    assert bottom - top > 0.85 * chase.height
    assert 0.9 < (right - left) / (bottom - top) < 1.1


def test_a_real_photograph_cropped_to_a_rectangle_is_gradable(chase: Image.Image) -> None:
    crop = _retina_crop(chase)
    assert assess_quality(crop).gradable
    assert field_of_view_box(crop) == (0, 0, crop.width, crop.height)


def test_a_real_rectangle_with_a_white_bar_is_gradable(chase: Image.Image) -> None:
    crop = _retina_crop(chase).filter(ImageFilter.GaussianBlur(1.0))
    ImageDraw.Draw(crop).rectangle([0, crop.height - 50, crop.width, crop.height], fill=(250,) * 3)
    assert assess_quality(crop).gradable
    assert field_of_view_box(crop)[3] <= crop.height - 47


def test_a_real_photograph_cut_at_its_sides_is_gradable(chase: Image.Image) -> None:
    left, _, right, _ = field_of_view_box(chase)
    cut = round(0.08 * (right - left))
    assert assess_quality(chase.crop((left + cut, 0, right - cut, chase.height))).gradable


@pytest.mark.parametrize("rectangle", [False, True], ids=["disc", "rectangle"])
def test_a_darkened_real_photograph_is_underexposed(chase: Image.Image, rectangle: bool) -> None:
    image = _retina_crop(chase) if rectangle else chase
    dark = Image.fromarray((np.asarray(image, dtype=np.float32) * 0.12).astype(np.uint8))
    assert UNDEREXPOSED in assess_quality(dark).reasons


@pytest.mark.parametrize("rectangle", [False, True], ids=["disc", "rectangle"])
def test_a_blurred_real_photograph_is_blurred(chase: Image.Image, rectangle: bool) -> None:
    image = _retina_crop(chase) if rectangle else chase
    blurred = image.filter(ImageFilter.GaussianBlur(min(image.size) / 512 * 6))
    assert BLURRED in assess_quality(blurred).reasons
