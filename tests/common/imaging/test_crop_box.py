"""The crop's field of view, found faster but exactly as before: same box, same model input.

The bundled model was trained on the pixels of PREPROCESSING_VERSION "2", so a faster
crop must give the same box to the pixel. These tests hold it to a straightforward
reference (the detector as it was first written: both thumbnails made, the whole circle
fitted) over fundus photographs of every kind the quality set has, real ones, bars at
and around the bar level, and pictures that are no fundus at all.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from common.imaging.decode import (
    _BAR_SOURCE_LEVEL,
    FIELD_OF_VIEW_THRESHOLD,
    _edge_strips,
    _may_be_bar,
    decode_image,
    field_of_view_box,
)
from common.imaging.field_of_view import (
    BAR_MAX_CHROMA,
    BAR_MIN_LEVEL,
    BAR_MIN_SHARE,
    edge_bars,
    field_of_view_region,
    find_field_of_view,
)
from common.imaging.gradability import assess_quality
from common.imaging.prepare import prepare_image
from common.imaging.preprocessing import FundusPreprocessing
from common.screening.quality import DEFAULT_THRESHOLDS
from lab.quality_samples import KINDS, make_sample
from lab.synthetic import encode_image, generate_fundus
from tests.support import DATA_DIR

LIMIT = 50_000_000
CHASE = sorted((DATA_DIR / "real").glob("CHASEDB1_*.png"))


def reference_bars(rgb: np.ndarray) -> tuple[int, int, int, int]:
    """:func:`edge_bars` as first written: channel extremes by reductions over the last axis."""
    height, width = rgb.shape[:2]
    low, high = rgb.min(axis=2), rgb.max(axis=2)
    bar = (low >= BAR_MIN_LEVEL) & (high.astype(np.int16) - low <= BAR_MAX_CHROMA)
    rows, cols = bar.mean(axis=1) >= BAR_MIN_SHARE, bar.mean(axis=0) >= BAR_MIN_SHARE

    def depth(flags: np.ndarray, side: int) -> int:
        run = int(np.argmin(flags)) if not flags.all() else flags.size
        return run if run <= 0.2 * side else 0

    top, bottom = depth(rows, height), height - depth(rows[::-1], height)
    left, right = depth(cols, width), width - depth(cols[::-1], width)
    if right - left < width // 2 or bottom - top < height // 2:
        return (0, 0, width, height)
    return (left, top, right, bottom)


def reference_box(image: Image.Image) -> tuple[int, int, int, int]:
    """:func:`field_of_view_box` as first written: both thumbnails, the full detector."""
    small = image.convert("L")
    small.thumbnail((256, 256))
    colour = image.copy()
    colour.thumbnail((256, 256))
    frame = reference_bars(np.asarray(colour))
    mask = find_field_of_view(np.asarray(small), FIELD_OF_VIEW_THRESHOLD, frame).region
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size < 8 or cols.size < 8:
        return (0, 0, image.width, image.height)
    scale_x, scale_y = image.width / small.width, image.height / small.height
    return (
        int(cols[0] * scale_x),
        int(rows[0] * scale_y),
        min(image.width, math.ceil((cols[-1] + 1) * scale_x)),
        min(image.height, math.ceil((rows[-1] + 1) * scale_y)),
    )


def reference_square(image: Image.Image, size: int) -> np.ndarray:
    """``square_fundus`` as first written, on the reference box."""
    cropped = image.crop(reference_box(image))
    scale = size / max(cropped.size)
    width = min(size, max(1, round(cropped.width * scale)))
    height = min(size, max(1, round(cropped.height * scale)))
    resized = cropped.resize((width, height), Image.Resampling.BILINEAR, reducing_gap=2.0)
    canvas = Image.new("RGB", (size, size))
    canvas.paste(resized, ((size - width) // 2, (size - height) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def _framed(size: tuple[int, int], seed: int, grade: int = 2) -> Image.Image:
    """A camera's frame: the disc as tall as the picture, centred, black beside it."""
    side = min(size)
    frame = Image.new("RGB", size)
    frame.paste(generate_fundus(grade, seed, side), ((size[0] - side) // 2, (size[1] - side) // 2))
    return frame


def _with_edge(
    image: Image.Image, edge: str, depth: int, fill: tuple[int, int, int]
) -> Image.Image:
    """``image`` with a band of ``fill`` along one edge."""
    out = image.copy()
    width, height = out.size
    band = {
        "top": (0, 0, width - 1, depth - 1),
        "bottom": (0, height - depth, width - 1, height - 1),
        "left": (0, 0, depth - 1, height - 1),
        "right": (width - depth, 0, width - 1, height - 1),
    }[edge]
    ImageDraw.Draw(out).rectangle(band, fill=fill)
    return out


def _pictures() -> Iterator[tuple[str, Image.Image]]:
    """Every framing the crop meets, and the bars and borders its shortcut must get right."""
    for kind in KINDS:
        for index in range(2):
            yield f"{kind}-{index}", make_sample(kind, index).image
    for path in CHASE:
        yield path.stem, Image.open(path).convert("RGB")
    for size in ((531, 514), (876, 584), (1000, 750), (300, 200), (200, 150), (1600, 400)):
        yield f"camera-{size[0]}x{size[1]}", _framed(size, seed=sum(size))
    base = _framed((700, 525), seed=5)
    for edge in ("top", "bottom", "left", "right"):
        for level in (BAR_MIN_LEVEL - 1, BAR_MIN_LEVEL, 250):
            yield f"grey-bar-{edge}-{level}", _with_edge(base, edge, 60, (level,) * 3)
        # bright but coloured: no bar, though every channel is high
        yield f"tinted-{edge}", _with_edge(base, edge, 60, (250, 250, 250 - BAR_MAX_CHROMA - 5))
        # just under the shortcut's level: the colour thumbnail is never made
        yield f"dim-{edge}", _with_edge(base, edge, 60, (_BAR_SOURCE_LEVEL - 1,) * 3)
        yield f"thin-{edge}", _with_edge(base, edge, 3, (255, 255, 255))
    yield "white", Image.new("RGB", (640, 480), (255, 255, 255))
    yield "grey", Image.new("RGB", (640, 480), (160, 160, 160))
    noise = np.random.default_rng(3).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    yield "noise", Image.fromarray(noise)


PICTURES = list(_pictures())


@pytest.mark.parametrize(("name", "image"), PICTURES, ids=[name for name, _ in PICTURES])
def test_the_box_is_the_reference_box(name: str, image: Image.Image) -> None:
    assert field_of_view_box(image) == reference_box(image), name


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_prepared_images_are_the_reference_pixels_and_verdicts(fmt: str) -> None:
    preprocessor = FundusPreprocessing(128, "rescale")
    photographs = [encode_image(image, fmt) for _, image in PICTURES[:: 3 if fmt == "png" else 1]]
    assert len(photographs) > 20
    gradable = 0
    for data in photographs:
        prepared = prepare_image(data, preprocessor, DEFAULT_THRESHOLDS, max_pixels=LIMIT)
        image = decode_image(data, max_pixels=LIMIT, draft_size=preprocessor.decode_side)
        assert prepared.quality == assess_quality(image, DEFAULT_THRESHOLDS)
        if prepared.pixels is None:
            continue
        gradable += 1
        np.testing.assert_array_equal(prepared.pixels, reference_square(image, 128))
    assert gradable > 10


def test_a_camera_photograph_never_needs_its_colour_thumbnail() -> None:
    """The shortcut is taken where it pays: a disc on black has no edge that could be a bar."""
    for size in ((531, 514), (876, 584), (1000, 750)):
        image = _framed(size, seed=size[0])
        strips = _edge_strips(image.size, (256, round(256 * size[1] / size[0])))
        assert not any(_may_be_bar(image, strip) for strip in strips), size


@pytest.mark.parametrize("size", [(1000, 750), (531, 514), (1600, 400), (300, 280), (256, 200)])
@pytest.mark.parametrize("pattern", ["stripes", "checks", "lines", "flat"])
def test_no_thumbnail_edge_pixel_reaches_the_bar_level_from_below_the_shortcut_level(
    size: tuple[int, int], pattern: str
) -> None:
    """The shortcut's premise: bicubic overshoot at sharp edges lifts no channel from under
    :data:`_BAR_SOURCE_LEVEL` to :data:`BAR_MIN_LEVEL`."""
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    on = {
        "stripes": (xx // 2 + yy // 3) % 2 == 0,
        "checks": (xx + yy) % 2 == 0,
        "lines": (xx % 7 == 0) | (yy % 5 == 0),
        "flat": np.ones((height, width), dtype=bool),
    }[pattern]
    pixels = np.where(on[..., None], _BAR_SOURCE_LEVEL - 1, 0).astype(np.uint8)
    pixels = np.repeat(pixels[..., :1], 3, axis=2)
    thumbnail = Image.fromarray(pixels)
    thumbnail.thumbnail((256, 256))
    edges = np.asarray(thumbnail)
    for line in (edges[0], edges[-1], edges[:, 0], edges[:, -1]):
        assert line.min(axis=1).max() < BAR_MIN_LEVEL


def test_bars_are_found_as_before_on_random_pictures() -> None:
    rng = np.random.default_rng(8)
    for _ in range(50):
        height, width = rng.integers(20, 200, 2)
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        depth = int(rng.integers(0, height // 4))
        rgb[:depth] = rng.integers(BAR_MIN_LEVEL, 256, 3, dtype=np.uint8)
        assert edge_bars(rgb) == reference_bars(rgb)


def test_the_region_alone_is_the_full_detectors_region() -> None:
    for _, image in PICTURES[::4]:
        value = np.asarray(image.convert("L").filter(ImageFilter.BoxBlur(1)))
        frame = edge_bars(np.asarray(image))
        expected = find_field_of_view(value, FIELD_OF_VIEW_THRESHOLD, frame).region
        np.testing.assert_array_equal(
            field_of_view_region(value, FIELD_OF_VIEW_THRESHOLD, frame), expected
        )
