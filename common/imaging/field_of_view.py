"""Where the retina is in a photograph: the field of view, whatever shape the camera gave it.

Real cameras frame the retina as a whole circle on black, a circle cut by chords at the
top and bottom or at the sides, with a notch or marker on its rim, or a rectangle that the
retina fills edge to edge (rounded or clipped corners at most); exports add burnt-in text,
logos, and white or grey bars along an edge. One detector serves both the quality check
(:mod:`common.imaging.gradability`) and the preprocessing crop
(:func:`common.imaging.decode.field_of_view_box`):

1. bright, colourless bars along an edge are no part of the picture: the frame is what
   is left inside them;
2. the field of view is the largest region of that frame brighter than the dark surround,
   holes filled (vessels, lesions and text inside it are retina too);
3. a circle is fitted to its free edge (the boundary away from the frame) by RANSAC, so a
   notch, a marker, text touching the rim or a chord pulls it nowhere;
4. where that edge is not round but the region fills its own bounding box, the field of
   view is a rectangular crop, and the plausible camera field behind it is the smallest
   circle around that rectangle.

``visible`` is the share of that plausible field inside the picture, so a rectangle is
measured against the circle it was cut from, never against one it never had. Numpy only,
on copies of 256 px at most: well under a millisecond or two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from common.imaging.regions import fill_holes, largest_region

CIRCLE = "circle"
RECTANGLE = "rectangle"
NONE = "none"

BAR_MIN_LEVEL = 150  # every channel at least this bright, ...
BAR_MAX_CHROMA = 40  # ... and this close to grey: a bar, not an over-exposed retina
BAR_MIN_SHARE = 0.9  # of a row or column's pixels, for it to be part of a bar
BAR_MAX_DEPTH = 0.2  # of the side: deeper than this it is the picture, not a bar
RECTANGLE_MIN_FILL = 0.88  # of its bounding box a rectangle (rounded corners) fills
_RANSAC_TRIALS = 96
_MIN_EDGE_POINTS = 16
_ARC_BINS = 90  # 4° each


@dataclass(frozen=True)
class FieldOfView:
    """The field of view on the array it was found on."""

    region: np.ndarray  # bool HxW, holes filled; all False when nothing stands out
    frame: tuple[int, int, int, int]  # left, top, right, bottom: the picture inside any bars
    shape: str  # CIRCLE, RECTANGLE or NONE
    radius: float  # of the plausible camera field; 0 when there is none
    visible: float  # share of that field's area inside the picture
    roundness: float  # share of the free edge on the fitted circle (0 without one)
    fill: float  # share of its own bounding box the region fills

    @property
    def frame_area(self) -> float:
        """Share of the frame (inside any bars) the field of view covers."""
        left, top, right, bottom = self.frame
        area = max(1, (right - left) * (bottom - top))
        return float(self.region.sum()) / area


def edge_bars(rgb: np.ndarray) -> tuple[int, int, int, int]:
    """The frame inside bright, colourless bars along the edges: left, top, right, bottom.

    A row (column) belongs to a bar when nearly all its pixels are bright and grey; bars
    are peeled from each edge inwards, at most :data:`BAR_MAX_DEPTH` of the side deep.
    """
    height, width = rgb.shape[:2]
    # channel by channel: a reduction over a last axis of three is ten times slower
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    low = np.minimum(np.minimum(red, green), blue)
    high = np.maximum(np.maximum(red, green), blue)
    bar = (low >= BAR_MIN_LEVEL) & (high.astype(np.int16) - low <= BAR_MAX_CHROMA)
    rows = bar.mean(axis=1) >= BAR_MIN_SHARE
    cols = bar.mean(axis=0) >= BAR_MIN_SHARE
    top = _depth(rows, height)
    bottom = height - _depth(rows[::-1], height)
    left = _depth(cols, width)
    right = width - _depth(cols[::-1], width)
    if right - left < width // 2 or bottom - top < height // 2:
        return (0, 0, width, height)
    return (left, top, right, bottom)


def _depth(flags: np.ndarray, side: int) -> int:
    """How many leading ``flags`` are set, or 0 when the run is deeper than a bar can be."""
    run = int(np.argmin(flags)) if not flags.all() else flags.size
    return run if run <= BAR_MAX_DEPTH * side else 0


def find_field_of_view(
    value: np.ndarray, threshold: float, frame: tuple[int, int, int, int] | None = None
) -> FieldOfView:
    """The field of view in a brightness plane, above ``threshold`` and inside ``frame``."""
    height, width = value.shape
    left, top, right, bottom = frame or (0, 0, width, height)
    frame = (left, top, right, bottom)
    region = field_of_view_region(value, threshold, frame)
    if not region.any():
        return FieldOfView(region, frame, NONE, 0.0, 0.0, 0.0, 0.0)
    area = float(region.sum())
    circle = _fit_free_edge(region, frame)
    rows = np.flatnonzero(region.any(axis=1))
    cols = np.flatnonzero(region.any(axis=0))
    box_w, box_h = cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0]
    fill = area / float(box_w * box_h)
    rectangular = fill >= RECTANGLE_MIN_FILL
    if circle is not None:
        radius, roundness = circle
        visible = area / (math.pi * radius**2)
        # a rectangle whose corners a circle rounds is still measured against that circle;
        # one whose edge is no circle at all is measured against the circle around it
        if roundness >= 0.5 or not rectangular:
            return FieldOfView(region, frame, CIRCLE, radius, visible, roundness, fill)
    else:
        roundness = 0.0
    if rectangular:
        radius = math.hypot(box_w, box_h) / 2
        visible = area / (math.pi * radius**2)
        return FieldOfView(region, frame, RECTANGLE, radius, visible, roundness, fill)
    return FieldOfView(region, frame, NONE, 0.0, 0.0, roundness, fill)


def field_of_view_region(
    value: np.ndarray, threshold: float, frame: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """The field of view's pixels alone: the largest region of ``value`` above ``threshold``
    inside ``frame``, holes filled (bool HxW).

    What a crop needs, without the circle fit that only the quality check's measures use.
    """
    height, width = value.shape
    left, top, right, bottom = frame or (0, 0, width, height)
    bright = np.zeros(value.shape, dtype=bool)
    bright[top:bottom, left:right] = value[top:bottom, left:right] > threshold
    return fill_holes(largest_region(bright))


def _fit_free_edge(
    region: np.ndarray, frame: tuple[int, int, int, int]
) -> tuple[float, float] | None:
    """Radius and roundness of the circle through the region's free edge, if it has one.

    The free edge is the region's boundary away from the frame, where the camera's
    aperture rather than the picture's border cuts the field. RANSAC keeps the circle
    that most of it lies on, so notches, markers, text touching the rim and chords are
    outliers; a least-squares fit on its inliers then refines it.
    """
    inner = region.copy()
    inner[1:, :] &= region[:-1, :]
    inner[:-1, :] &= region[1:, :]
    inner[:, 1:] &= region[:, :-1]
    inner[:, :-1] &= region[:, 1:]
    edge = region & ~inner
    left, top, right, bottom = frame
    edge[: top + 1, :] = edge[bottom - 1 :, :] = False
    edge[:, : left + 1] = edge[:, right - 1 :] = False
    ys, xs = np.nonzero(edge)
    if xs.size < _MIN_EDGE_POINTS:
        return None
    points = np.column_stack([xs, ys]).astype(np.float64)
    size = max(region.shape)
    # deterministic: the same photograph always gets the same circle
    rng = np.random.default_rng(xs.size)
    # a trio that repeats a point has no circle: its radius comes out infinite, and is dropped
    trios = rng.integers(0, xs.size, (_RANSAC_TRIALS, 3))
    centres, radii = _circles_through(points[trios])
    # a straight side would fit a huge circle: no camera's aperture is that much wider
    plausible = np.isfinite(radii) & (radii > 0.1 * size) & (radii < 0.8 * size)
    if not plausible.any():
        return None
    centres, radii = centres[plausible], radii[plausible]
    tolerance = np.maximum(1.5, 0.03 * radii)
    distance = np.hypot(
        points[None, :, 0] - centres[:, None, 0], points[None, :, 1] - centres[:, None, 1]
    )
    inliers = np.abs(distance - radii[:, None]) <= tolerance[:, None]
    best = int(np.argmax(inliers.sum(axis=1)))
    keep = inliers[best]
    if keep.sum() < _MIN_EDGE_POINTS // 2:
        return None
    cx, cy, radius = _least_squares_circle(points[keep])
    residual = np.abs(np.hypot(points[:, 0] - cx, points[:, 1] - cy) - radius)
    on_circle = points[residual <= max(1.5, 0.04 * radius)]
    # Roundness is how much of the circle's arc inside the frame the edge follows: text
    # or a logo stuck to the rim adds edge that is off the circle but hides none of it.
    angles = np.linspace(0.0, 2 * math.pi, _ARC_BINS, endpoint=False)
    arc_x, arc_y = cx + radius * np.cos(angles), cy + radius * np.sin(angles)
    in_frame = (arc_x > left + 1) & (arc_x < right - 2) & (arc_y > top + 1) & (arc_y < bottom - 2)
    if not in_frame.any():
        return None
    seen = np.zeros(_ARC_BINS, dtype=bool)
    found = np.arctan2(on_circle[:, 1] - cy, on_circle[:, 0] - cx) % (2 * math.pi)
    seen[np.minimum((found / (2 * math.pi) * _ARC_BINS).astype(int), _ARC_BINS - 1)] = True
    return radius, float((seen & in_frame).sum() / in_frame.sum())


def _circles_through(trios: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre (Nx2) and radius (N) of the circle through each trio of points (Nx3x2)."""
    a, b, c = trios[:, 0], trios[:, 1], trios[:, 2]
    d = 2 * (a[:, 0] * (b[:, 1] - c[:, 1]) + b[:, 0] * (c[:, 1] - a[:, 1]))
    d += 2 * c[:, 0] * (a[:, 1] - b[:, 1])
    sa, sb, sc = (a**2).sum(axis=1), (b**2).sum(axis=1), (c**2).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ux = (sa * (b[:, 1] - c[:, 1]) + sb * (c[:, 1] - a[:, 1]) + sc * (a[:, 1] - b[:, 1])) / d
        uy = (sa * (c[:, 0] - b[:, 0]) + sb * (a[:, 0] - c[:, 0]) + sc * (b[:, 0] - a[:, 0])) / d
    centres = np.column_stack([ux, uy])
    radii = np.hypot(a[:, 0] - ux, a[:, 1] - uy)
    return centres, np.where(np.abs(d) > 1e-9, radii, np.inf)


def _least_squares_circle(points: np.ndarray) -> tuple[float, float, float]:
    """Centre and radius of the algebraic (Kåsa) least-squares circle through ``points``."""
    xs, ys = points[:, 0], points[:, 1]
    design = np.column_stack([xs, ys, np.ones(xs.size)])
    (d, e, f), *_ = np.linalg.lstsq(design, -(xs**2 + ys**2), rcond=None)
    cx, cy = -d / 2, -e / 2
    return float(cx), float(cy), math.sqrt(max(cx**2 + cy**2 - f, 1e-6))
