"""Image quality (gradability): is this photograph fit to grade, and if not, why not.

Runs on every image before the model, so that an image too blurred, too dark, washed out,
badly framed or not a fundus at all is answered "ungradable, recapture" instead of being
given a grade. It errs towards gradable: a clean photograph from an ordinary camera (a
disc cut off at the top and bottom, 565 to 4,000 pixels, a dark pigmented or a light
blond fundus, JPEG compression, text burnt into the corners) passes, and only a clear
defect fails. Colour photographs only: a red-free (grey) one is ``not_fundus``.

The field of view is the largest region brighter than a black surround, holes filled; a
circle is fitted to its edge where the aperture, not the frame, bounds it. A region that
is small or not round is ``no_field_of_view``, one bright from edge to edge with no round
edge ``not_fundus``, and a round one with too little of its circle inside the frame
``field_of_view_cut_off``. Without a retina (``not_fundus``, ``no_field_of_view``)
exposure and focus are not judged, as they would mean nothing.

Every signal is measured on small copies (framing, colour and exposure at about 130 px,
focus with the disc resampled to 128 and 64 px across), so the cost hardly grows with the
size. CPU time per image on this project's 2-core machine: 6-7 ms at 512 and 565 px, 8 ms at
1,024 px, 16 ms at 3,504 x 2,336 and 22 ms at 3,500 x 3,500, where reducing the 12
megapixels is most of it. Decoding such a JPEG costs more than checking it: 60-100 ms in
full, or 12-20 ms with the worker's draft decoding, after which the check takes 6-8 ms.

The verdict's vocabulary (reasons, thresholds, the report) is :mod:`common.screening.quality`,
which the API renders without loading this module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from PIL import Image

from common.imaging.decode import FIELD_OF_VIEW_THRESHOLD
from common.imaging.field_of_view import RECTANGLE, FieldOfView, edge_bars, find_field_of_view
from common.screening.quality import (
    BLURRED,
    DEFAULT_THRESHOLDS,
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

WORK_SIDE = 512  # a large image is reduced by a whole factor to a shorter side >= this
GEOMETRY_SIDE = 160  # the small copy's longer side is at most this
FOCUS_DIAMETER = 128  # pixels across the disc where focus measures fine detail
SATURATED_LUMINANCE = 245
_EDGE_MARGIN = 0.05  # of the disc's diameter, left out of colour, exposure and focus
_PRINT_DETAIL = 0.3  # fine structure no retina reaches: print, a document's text
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def assess_quality(
    image: Image.Image, thresholds: QualityThresholds = DEFAULT_THRESHOLDS
) -> QualityReport:
    """Measure a photograph's gradability signals and judge them against ``thresholds``."""
    work = _working_copy(image)
    factor = max(1, math.ceil(max(work.size) / GEOMETRY_SIDE))
    small = np.asarray(work.reduce(factor) if factor > 1 else work)
    fov = _field_of_view(small)
    radius = fov.radius
    inside = _erode(fov.region, 2 * radius * _EDGE_MARGIN) if radius else fov.region
    if not inside.any():
        # nothing stands out: colour and exposure of the whole picture, and no focus
        inside, radius = np.ones_like(fov.region), 0.0
    pixels = small[inside].astype(np.float32)
    red, green, blue = pixels.mean(axis=0)
    luminance = pixels @ _LUMA
    measures = {
        "fov_area": fov.frame_area,
        "fov_visible": fov.visible,
        "fov_roundness": fov.roundness,
        "fov_fill": fov.fill,
        "detail": _detail(small[..., 1], inside),
        "red_share": red / max(red + green + blue, 1e-6),
        "blue_green_ratio": blue / max(green, 1e-6),
        "brightness": luminance.mean(),
        "saturated": (luminance >= SATURATED_LUMINANCE).mean(),
        "focus": _focus(work, inside, _focus_span(fov, inside, radius)),
    }
    rounded = {name: round(float(measures[name]), 4) for name in MEASURES}
    reasons = _judge(rounded, thresholds)
    return QualityReport(gradable=not reasons, reasons=reasons, measures=rounded)


def _judge(m: Mapping[str, float], t: QualityThresholds) -> tuple[str, ...]:
    """The reasons the measures fail, in :data:`REASONS` order."""
    round_edge = m["fov_roundness"] >= t.min_fov_roundness
    # A rectangular crop has no round edge: the retina filling it, vessels and all, is the
    # evidence instead. Defocus smooths the vessels away too, but leaves what detail there
    # is coarse (low focus), where a flat picture has none and its noise is fine: that is a
    # blurred retina.
    retina_fills_box = m["fov_fill"] >= t.min_fov_fill and (
        m["detail"] >= t.min_detail or 0 < m["focus"] < t.min_focus
    )
    framed = (
        m["fov_area"] >= t.min_fov_area
        and (round_edge or retina_fills_box)
        and m["fov_visible"] <= t.max_fov_visible
    )
    washed_out = m["brightness"] > t.max_brightness or m["saturated"] > t.max_saturated
    pale = m["red_share"] < t.min_red_share
    bluish = m["blue_green_ratio"] > t.max_blue_green_ratio
    # Near black, the colour is the sensor's noise and black level, not the retina's: a
    # dim picture that shows no fundus colour is too dark to judge, not something else.
    dark = m["brightness"] < t.min_brightness or (
        m["brightness"] < 1.5 * t.min_brightness and (pale or bluish)
    )
    if not framed:
        if dark:
            return (UNDEREXPOSED,)
        # bright from edge to edge with no round edge anywhere: no dark surround at all
        full_frame = m["fov_area"] > t.max_fov_area
        return (NOT_FUNDUS,) if pale or bluish or full_frame else (NO_FIELD_OF_VIEW,)
    # A washed-out retina loses its red, but not the order of green over blue; and on a
    # picture that is no retina, exposure and focus mean nothing.
    # A white page is washed out and pale too, but its print is far more contrasted than
    # any retina (detail 0.41 up against 0.14 at most, over-exposed ones 0.06): not one.
    printed = m["detail"] >= _PRINT_DETAIL
    if (bluish or (pale and (printed or not washed_out))) and not dark:
        return (NOT_FUNDUS,)
    failed = {
        FIELD_OF_VIEW_CUT_OFF: m["fov_visible"] < t.min_fov_visible,
        UNDEREXPOSED: dark,
        OVEREXPOSED: washed_out,
        BLURRED: m["focus"] < t.min_focus,
    }
    return tuple(reason for reason in REASONS if failed.get(reason))


def _working_copy(image: Image.Image) -> Image.Image:
    """RGB, reduced by a whole factor (a box filter, cheap) to a shorter side of 512..1023."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    factor = min(rgb.size) // WORK_SIDE
    return rgb.reduce(factor) if factor > 1 else rgb


def _field_of_view(small: np.ndarray) -> FieldOfView:
    """The field of view on the small copy: inside any edge bars, above the dark surround."""
    frame = edge_bars(small)
    left, top, right, bottom = frame
    value = np.maximum(np.maximum(small[..., 0], small[..., 1]), small[..., 2])
    counts = np.bincount(value[top:bottom, left:right].ravel(), minlength=256).cumsum()
    darkest, bright = np.searchsorted(counts, [0.01 * counts[-1], 0.95 * counts[-1]])
    # The threshold follows a dim exposure down, so that a dark photograph is still framed
    # (and then called underexposed), and a surround some cameras leave dark grey up; but
    # it stops at that grey, so a picture bright from edge to edge stays one whole region.
    floor = min(float(darkest), 40.0) + 8.0
    # A dark myopic fundus fades to 10-20 at its rim: 12 % of the bright end still holds it.
    threshold = max(floor, min(float(FIELD_OF_VIEW_THRESHOLD), 0.12 * float(bright)))
    return find_field_of_view(value, threshold, frame)


def _erode(mask: np.ndarray, pixels: float) -> np.ndarray:
    """``mask`` shrunk by about ``pixels`` on every side: a square window of running sums."""
    half = max(1, round(pixels))
    width = 2 * half + 1
    table = np.zeros((mask.shape[0] + 2 * half + 1, mask.shape[1] + 2 * half + 1), np.int32)
    table[1:, 1:] = np.pad(mask, half).cumsum(axis=0, dtype=np.int32).cumsum(axis=1)
    window = (
        table[width:, width:]
        - table[:-width, width:]
        - table[width:, :-width]
        + table[:-width, :-width]
    )
    eroded: np.ndarray = window == width * width  # numpy types comparisons as Any
    return eroded


def _focus_span(fov: FieldOfView, inside: np.ndarray, radius: float) -> float:
    """How many small-copy pixels across the retina is whose focus is measured.

    A disc's circle gives its scale. A rectangular crop may be the middle of the circle
    around it, magnified to fill the frame, or a narrower camera's whole field: measured
    at that circle's scale its retina is sampled too coarsely, and a defocus of 3 px at
    512 passes for sharp (11 of 40 generated); at its own extent (the longer side of the
    part measured) clean synthetic crops fall among the blurred ones (8 of 80). The
    geometric mean of the two errs least on both (3 and 3), and on real crops separates
    clean from blurred.
    """
    if radius <= 0:
        return 0.0
    if fov.shape != RECTANGLE:
        return 2 * radius
    ys, xs = np.nonzero(inside)
    extent = max(xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min())
    return math.sqrt(2 * radius * float(extent))


def _focus(work: Image.Image, inside: np.ndarray, span: float) -> float:
    """How much of the green channel's detail survives at a fine scale: the variance of its
    Laplacian with the disc resampled to :data:`FOCUS_DIAMETER` pixels across, over the
    same at half that. Blur removes the fine detail first and leaves the coarse; and as a
    ratio it moves with neither the photograph's resolution nor its exposure or contrast.

    ``inside`` is the eroded field of view and ``span`` its diameter (see
    :func:`_focus_span`), both on the small copy.
    """
    if span <= 0:
        return 0.0
    ys, xs = np.nonzero(inside)
    ratio = work.width / inside.shape[1]
    box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    extent = max(box[2] - box[0], box[3] - box[1])
    # focus pixels per small-copy pixel; capped for a region far larger than its circle
    scale = min(FOCUS_DIAMETER / span, 2 * FOCUS_DIAMETER / extent)
    crop = tuple(min(float(v) * ratio, limit) for v, limit in zip(box, work.size * 2, strict=True))
    green = work.getchannel("G")
    mask = Image.fromarray(inside[box[1] : box[3], box[0] : box[2]])
    variances = []
    for step in (scale, scale / 2):
        size = (max(3, round((box[2] - box[0]) * step)), max(3, round((box[3] - box[1]) * step)))
        resampled = green.resize(size, Image.Resampling.BILINEAR, box=crop, reducing_gap=2.0)
        variances.append(
            _laplacian_variance(resampled, mask.resize(size, Image.Resampling.NEAREST))
        )
    fine, coarse = variances
    return fine / coarse if coarse > 0 else 0.0


def _laplacian_variance(image: Image.Image, mask: Image.Image) -> float:
    """Variance of the 4-neighbour Laplacian of an 8-bit image where ``mask`` is set."""
    pixels = np.asarray(image, dtype=np.float32)
    inside = np.asarray(mask)[1:-1, 1:-1]
    laplacian = (
        pixels[:-2, 1:-1] + pixels[2:, 1:-1] + pixels[1:-1, :-2] + pixels[1:-1, 2:]
    ) - 4.0 * pixels[1:-1, 1:-1]
    return float(laplacian[inside].var()) if inside.any() else 0.0


def _detail(green: np.ndarray, inside: np.ndarray) -> float:
    """How much fine structure the green channel has inside the field of view: the mean
    absolute difference from a 5-pixel local mean, over the mean level.

    Vessels and the choroid's pattern give a retina plenty even when defocused; a flat
    or smoothly shaded picture that merely has a fundus's colour has almost none.
    """
    if inside.sum() < 25:
        return 0.0
    local = _box_mean(green.astype(np.float32), 2)
    level = float(green[inside].mean())
    return float(np.abs(green[inside] - local[inside]).mean()) / max(level, 1.0)


def _box_mean(plane: np.ndarray, half: int) -> np.ndarray:
    """Mean of every (2*half+1)-square window, edges repeated: running sums, no SciPy."""
    width = 2 * half + 1
    padded = np.pad(plane, half + 1, mode="edge")
    table = padded.cumsum(axis=0).cumsum(axis=1)
    window = (
        table[width:, width:]
        - table[:-width, width:]
        - table[width:, :-width]
        + table[:-width, :-width]
    )
    mean: np.ndarray = window[: plane.shape[0], : plane.shape[1]] / (width * width)
    return mean
