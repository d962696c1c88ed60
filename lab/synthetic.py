"""Deterministic synthetic fundus photographs, one ICDR grade each: numpy and Pillow only.

No real photograph may ship with the project, so the bundled model, the demo samples and
the tests all use these. Each image has a field-of-view disc, an optic disc, a macula and
branching vessels, plus the lesions that define its grade (see docs/domain.md), drawn large
enough to stay visible once downscaled to a small model's input.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from common.screening.grades import GRADES

FORMATS = {"jpg": "JPEG", "png": "PNG"}
JPEG_QUALITY = 90
LABELS_NAME = "labels.csv"

# Per-channel darkening of red lesions and veins: blood absorbs green and blue most.
_RED_LESION_ABSORPTION = np.array([0.55, 0.80, 0.75], dtype=np.float32)
_VESSEL_ABSORPTION = np.array([0.40, 0.60, 0.50], dtype=np.float32)
_EXUDATE_RGB = np.array([250.0, 228.0, 110.0], dtype=np.float32)
_COTTON_WOOL_RGB = np.array([238.0, 228.0, 205.0], dtype=np.float32)
_DISC_RGB = np.array([252.0, 214.0, 140.0], dtype=np.float32)
_CUP_RGB = np.array([255.0, 240.0, 205.0], dtype=np.float32)


@dataclass(frozen=True)
class _Geometry:
    """Where the anatomy of one image lies, in pixels."""

    size: int
    cx: float
    cy: float
    radius: float
    half_height: float  # rows further than this from cy are cut off, as on 45° cameras
    disc_x: float
    disc_y: float
    disc_r: float
    macula_x: float
    macula_y: float

    @property
    def scale(self) -> float:
        """Pixel scale relative to a 512 px image, so strokes shrink and grow with the image."""
        return self.size / 512.0

    def inside(self, x: float, y: float, margin: float = 0.0) -> bool:
        """True when the point lies in the field of view, ``margin`` pixels from its edge."""
        in_disc = math.hypot(x - self.cx, y - self.cy) < self.radius - margin
        return in_disc and abs(y - self.cy) < self.half_height - margin


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates, cached because every image of a size reuses them."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _geometry(rng: np.random.Generator, size: int) -> _Geometry:
    """A random camera framing and a random left or right eye."""
    radius = size * rng.uniform(0.42, 0.48)
    cx = size / 2 + size * rng.uniform(-0.03, 0.03)
    cy = size / 2 + size * rng.uniform(-0.03, 0.03)
    cut = rng.random() < 0.35
    half_height = radius * rng.uniform(0.84, 0.93) if cut else radius + 1.0
    side = 1.0 if rng.random() < 0.5 else -1.0  # +1: disc right of centre (a right eye)
    disc_r = radius * rng.uniform(0.085, 0.11)
    disc_x = cx + side * radius * rng.uniform(0.38, 0.46)
    disc_y = cy + radius * rng.uniform(-0.08, 0.08)
    return _Geometry(
        size=size,
        cx=cx,
        cy=cy,
        radius=radius,
        half_height=half_height,
        disc_x=disc_x,
        disc_y=disc_y,
        disc_r=disc_r,
        macula_x=disc_x - side * disc_r * rng.uniform(4.6, 5.4),
        macula_y=disc_y + radius * rng.uniform(0.0, 0.08),
    )


def _blend(rgb: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    """Mix ``colour`` into ``rgb`` in place with a per-pixel opacity."""
    rgb += alpha[..., None] * (colour - rgb)


def _absorb(rgb: np.ndarray, alpha: np.ndarray, absorption: np.ndarray) -> None:
    """Darken ``rgb`` in place as blood of the given per-channel absorption would."""
    rgb *= 1.0 - alpha[..., None] * absorption


def _apply(
    rgb: np.ndarray,
    mask: Image.Image,
    blur: float,
    paint: Callable[[np.ndarray, np.ndarray, np.ndarray], None],
    colour: np.ndarray,
    strength: float = 1.0,
) -> None:
    """Paint a drawn 8-bit mask onto ``rgb`` in place, softened so its edges are not aliased."""
    # only the mask's bounding box is blurred and painted: most lesion masks cover a sliver
    # of the image, and this keeps a 512 px image well under 50 ms
    box = mask.getbbox()
    if box is None:
        return
    pad = int(3 * blur) + 2
    x0, y0 = max(0, box[0] - pad), max(0, box[1] - pad)
    x1, y1 = min(mask.width, box[2] + pad), min(mask.height, box[3] + pad)
    region = mask.crop((x0, y0, x1, y1))
    if blur > 0:
        region = region.filter(ImageFilter.GaussianBlur(blur))
    alpha = np.asarray(region, dtype=np.float32) * (strength / 255.0)
    paint(rgb[y0:y1, x0:x1], alpha, colour)


def _background(rng: np.random.Generator, geo: _Geometry) -> np.ndarray:
    """Orange-red retina with vignetting, a blotchy choroid and a darker macula: float HxWx3."""
    yy, xx = _grid(geo.size)
    dist = np.hypot(xx - geo.cx, yy - geo.cy) * (1.0 / geo.radius)
    base = np.array(
        [rng.uniform(195, 235), rng.uniform(78, 112), rng.uniform(25, 55)], dtype=np.float32
    )
    shade = 1.0 - rng.uniform(0.35, 0.55) * np.minimum(dist, 1.0) ** rng.uniform(2.0, 3.0)
    texture = Image.fromarray(rng.normal(0.0, 1.0, (7, 7)).astype(np.float32), mode="F")
    texture = texture.resize((geo.size, geo.size), Image.Resampling.BICUBIC)
    shade *= 1.0 + 0.05 * np.asarray(texture, dtype=np.float32)
    sigma = geo.radius * rng.uniform(0.10, 0.14)
    macula = np.exp(-((xx - geo.macula_x) ** 2 + (yy - geo.macula_y) ** 2) / (2 * sigma**2))
    shade *= 1.0 - rng.uniform(0.25, 0.4) * macula
    return shade[..., None] * base


def _optic_disc(rgb: np.ndarray, rng: np.random.Generator, geo: _Geometry) -> None:
    """A yellowish disc with a paler cup, translucent so the vessels on it still show."""
    r = int(geo.disc_r) + 2
    x0, y0 = max(0, int(geo.disc_x) - r), max(0, int(geo.disc_y) - r)
    x1, y1 = min(geo.size, int(geo.disc_x) + r + 1), min(geo.size, int(geo.disc_y) + r + 1)
    yy, xx = _grid(geo.size)
    dist = np.hypot(xx[y0:y1, x0:x1] - geo.disc_x, yy[y0:y1, x0:x1] - geo.disc_y)
    region = rgb[y0:y1, x0:x1]
    _blend(region, np.clip((geo.disc_r - dist) / (0.3 * geo.disc_r), 0.0, 1.0) * 0.75, _DISC_RGB)
    cup_r = geo.disc_r * rng.uniform(0.3, 0.5)
    _blend(region, np.clip((cup_r - dist) / (0.5 * cup_r), 0.0, 1.0) * 0.7, _CUP_RGB)


def _stroke(
    draw: ImageDraw.ImageDraw,
    a: tuple[float, float],
    b: tuple[float, float],
    width: float,
    fill: int,
) -> None:
    """One vessel segment with a round joint, so a polyline of varying width has no gaps."""
    w = max(1, round(width))
    draw.line([a, b], fill=fill, width=w)
    r = w / 2
    draw.ellipse([b[0] - r, b[1] - r, b[0] + r, b[1] + r], fill=fill)


@dataclass(frozen=True)
class _Vessel:
    """How one vessel starts: a branch inherits all but its start, angle and length."""

    x: float
    y: float
    angle: float
    curvature: float
    width: float
    length: float
    depth: int
    fill: int
    beads: np.random.Generator | None  # draws the bead sizes of a beaded vein


def _grow_vessel(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, geo: _Geometry, vessel: _Vessel
) -> None:
    """Draw a wandering, tapering vessel that branches ``vessel.depth`` levels deep."""
    step = geo.radius * 0.03
    steps = max(2, int(vessel.length / step))
    x, y, angle = vessel.x, vessel.y, vessel.angle
    for k in range(steps):
        angle += vessel.curvature + rng.normal(0.0, 0.05)
        nx, ny = x + step * math.cos(angle), y + step * math.sin(angle)
        w = vessel.width * (1.0 - 0.55 * k / steps)
        _stroke(draw, (x, y), (nx, ny), w, vessel.fill)
        if vessel.beads is not None and k % 3 == 1:
            # venous beading: the calibre swells and narrows along the vein
            r = w * vessel.beads.uniform(0.6, 0.85)
            draw.ellipse([nx - r, ny - r, nx + r, ny + r], fill=vessel.fill)
        if vessel.depth > 0 and k > 1 and rng.random() < 0.11:
            branch = _Vessel(
                x=nx,
                y=ny,
                angle=angle + rng.choice((-1.0, 1.0)) * rng.uniform(0.45, 1.0),
                curvature=rng.uniform(-0.04, 0.04),
                width=w * 0.7,
                length=(steps - k) * step * rng.uniform(0.35, 0.7),
                depth=vessel.depth - 1,
                fill=vessel.fill,
                beads=vessel.beads,
            )
            _grow_vessel(draw, rng, geo, branch)
        x, y = nx, ny
        if not geo.inside(x, y, margin=-geo.radius * 0.05):
            return


def _vessels(
    rng: np.random.Generator, geo: _Geometry, beading: np.random.Generator | None
) -> Image.Image:
    """Vessel mask, veins darker than arteries: arcades around the macula, nasal branches."""
    # beads come from ``beading``, the lesion generator, and never move a vessel: an eye's
    # vessels are the same at every grade
    mask = Image.new("L", (geo.size, geo.size))
    draw = ImageDraw.Draw(mask)
    right_eye = geo.disc_x > geo.cx
    # (angle for a disc right of centre, curvature, length in radii); mirrored for a left eye
    trunks = [
        (math.radians(-120), -0.045, 1.7),
        (math.radians(120), 0.045, 1.7),
        (math.radians(-40), 0.02, 0.7),
        (math.radians(40), -0.02, 0.7),
    ]
    beaded: set[int] = set()
    if beading is not None:
        beaded = {int(i) for i in beading.choice(4, int(beading.integers(2, 4)), replace=False)}
    # arteries first, so a vein crossing an artery stays the darker of the two
    for width, offset, fill in ((7.0, -0.12, 150), (10.0, 0.12, 255)):
        for index, (angle, curvature, length) in enumerate(trunks):
            if not right_eye:
                angle, curvature = math.pi - angle, -curvature
            trunk = _Vessel(
                x=geo.disc_x,
                y=geo.disc_y,
                angle=angle + offset + rng.normal(0.0, 0.08),
                curvature=curvature + rng.normal(0.0, 0.008),
                width=width * geo.scale * rng.uniform(0.9, 1.1),
                length=length * geo.radius * rng.uniform(0.85, 1.1),
                depth=2,
                fill=fill,
                beads=beading if fill == 255 and index in beaded else None,
            )
            _grow_vessel(draw, rng, geo, trunk)
    for _ in range(int(rng.integers(2, 5))):
        small = _Vessel(
            x=geo.disc_x,
            y=geo.disc_y,
            angle=rng.uniform(0, 2 * math.pi),
            curvature=rng.uniform(-0.03, 0.03),
            width=4.0 * geo.scale,
            length=geo.radius * rng.uniform(0.3, 0.6),
            depth=1,
            fill=130,
            beads=None,
        )
        _grow_vessel(draw, rng, geo, small)
    return mask


def _points(
    rng: np.random.Generator, geo: _Geometry, n: int, quadrant: int | None = None
) -> list[tuple[float, float]]:
    """``n`` lesion sites inside the field of view, off the optic disc, optionally in a quadrant."""
    lo, hi = 0.0, 2 * math.pi
    if quadrant is not None:
        lo, hi = quadrant * math.pi / 2, (quadrant + 1) * math.pi / 2
    found: list[tuple[float, float]] = []
    while len(found) < n:
        r = geo.radius * 0.88 * np.sqrt(rng.uniform(0.02, 1.0, 4 * n + 4))
        a = rng.uniform(lo, hi, r.size)
        for x, y in zip(geo.cx + r * np.cos(a), geo.cy + r * np.sin(a), strict=True):
            off_disc = math.hypot(x - geo.disc_x, y - geo.disc_y) > 1.6 * geo.disc_r
            if off_disc and geo.inside(x, y, margin=geo.radius * 0.06):
                found.append((float(x), float(y)))
                if len(found) == n:
                    break
    return found


def _ellipse(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, fill: int) -> None:
    """A filled circle of radius ``r`` (at least a pixel across)."""
    r = max(r, 0.75)
    draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)


def _rotated_ellipse(
    draw: ImageDraw.ImageDraw, x: float, y: float, a: float, b: float, angle: float, fill: int
) -> None:
    """A filled ellipse with semi-axes ``a`` and ``b`` turned by ``angle``, as a polygon."""
    t = np.linspace(0, 2 * math.pi, 16, endpoint=False)
    px, py = a * np.cos(t), b * np.sin(t)
    ca, sa = math.cos(angle), math.sin(angle)
    draw.polygon(list(zip(x + ca * px - sa * py, y + sa * px + ca * py, strict=True)), fill=fill)


def _microaneurysms(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, geo: _Geometry, n: int
) -> None:
    """Tiny dark-red dots: the only sign of mild NPDR, big enough to survive a 128 px input."""
    for x, y in _points(rng, geo, n):
        _ellipse(draw, x, y, rng.uniform(3.6, 5.0) * geo.scale, int(rng.integers(225, 256)))


def _haemorrhages(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    geo: _Geometry,
    n: int,
    quadrant: int | None,
) -> None:
    """Dot, blot and flame haemorrhages: larger red lesions, round, clustered or streaked."""
    for x, y in _points(rng, geo, n, quadrant):
        r = rng.uniform(5.5, 12.0) * geo.scale
        fill = int(rng.integers(200, 256))
        kind = rng.random()
        if kind < 0.4:
            _ellipse(draw, x, y, r, fill)
        elif kind < 0.8:
            for _ in range(int(rng.integers(2, 5))):
                dx, dy = rng.normal(0.0, 0.5 * r, 2)
                _ellipse(draw, x + dx, y + dy, r * rng.uniform(0.5, 1.0), fill)
        else:
            # flame-shaped: streaked along the nerve fibres, which radiate from the disc
            angle = math.atan2(y - geo.disc_y, x - geo.disc_x)
            _rotated_ellipse(draw, x, y, 2.2 * r, 0.7 * r, angle, fill)


def _exudates(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, geo: _Geometry, clusters: int
) -> None:
    """Clusters of small, sharp yellow deposits, mostly around the macula."""
    for _ in range(clusters):
        if rng.random() < 0.6:
            spread = geo.radius * 0.35
            cx = geo.macula_x + rng.normal(0.0, spread / 2)
            cy = geo.macula_y + rng.normal(0.0, spread / 2)
        else:
            cx, cy = _points(rng, geo, 1)[0]
        for _ in range(int(rng.integers(3, 10))):
            x, y = cx + rng.normal(0.0, 12 * geo.scale), cy + rng.normal(0.0, 12 * geo.scale)
            if geo.inside(x, y, margin=geo.radius * 0.05):
                _ellipse(draw, x, y, rng.uniform(2.5, 5.0) * geo.scale, 255)


def _cotton_wool(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, geo: _Geometry, n: int
) -> None:
    """Pale, fluffy, ill-defined patches (nerve-fibre infarcts) near the posterior pole."""
    for x, y in _points(rng, geo, n):
        r = rng.uniform(9.0, 15.0) * geo.scale
        angle = math.atan2(y - geo.disc_y, x - geo.disc_x) + math.pi / 2
        _rotated_ellipse(draw, x, y, r * 1.4, r * 0.8, angle, int(rng.integers(190, 240)))


def _neovascularisation(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, geo: _Geometry, at_disc: bool
) -> None:
    """A tangle of fine, tortuous new vessels on the disc (NVD) or elsewhere (NVE)."""
    if at_disc:
        cx, cy = geo.disc_x, geo.disc_y
    else:
        cx, cy = _points(rng, geo, 1)[0]
    reach = geo.disc_r * rng.uniform(1.5, 2.2)
    width = max(1.0, 2.6 * geo.scale)
    for _ in range(int(rng.integers(12, 20))):
        x, y = cx + rng.normal(0, reach / 3), cy + rng.normal(0, reach / 3)
        angle = rng.uniform(0, 2 * math.pi)
        step = reach * 0.12
        for _ in range(int(rng.integers(8, 16))):
            angle += rng.normal(0.0, 0.9)
            nx, ny = x + step * math.cos(angle), y + step * math.sin(angle)
            if math.hypot(nx - cx, ny - cy) > reach:
                angle += math.pi
                continue
            _stroke(draw, (x, y), (nx, ny), width, 235)
            x, y = nx, ny


def _preretinal_haemorrhage(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, geo: _Geometry
) -> None:
    """A boat-shaped bleed in front of the retina: blood settles, so its top edge is flat."""
    x, y = _points(rng, geo, 1)[0]
    a = rng.uniform(26.0, 44.0) * geo.scale
    b = a * rng.uniform(0.7, 1.0)
    t = np.linspace(0.0, math.pi, 20)
    outline = list(zip(x + a * np.cos(t), y + b * np.sin(t), strict=True))
    draw.polygon(outline, fill=int(rng.integers(215, 256)))


def _lesions(rng: np.random.Generator, geo: _Geometry, grade: int) -> tuple[Image.Image, ...]:
    """Red-lesion, exudate and cotton-wool masks for the grade's signs (docs/domain.md)."""
    size = (geo.size, geo.size)
    red, yellow, white = Image.new("L", size), Image.new("L", size), Image.new("L", size)
    red_draw = ImageDraw.Draw(red)
    yellow_draw = ImageDraw.Draw(yellow)
    white_draw = ImageDraw.Draw(white)
    if grade == 1:
        _microaneurysms(red_draw, rng, geo, int(rng.integers(3, 9)))
    elif grade == 2:
        _microaneurysms(red_draw, rng, geo, int(rng.integers(5, 14)))
        _haemorrhages(red_draw, rng, geo, int(rng.integers(3, 9)), None)
        _exudates(yellow_draw, rng, geo, int(rng.integers(0, 4)))
        _cotton_wool(white_draw, rng, geo, int(rng.integers(0, 3)))
    elif grade >= 3:
        _microaneurysms(red_draw, rng, geo, int(rng.integers(8, 20)))
        for quadrant in range(4):
            _haemorrhages(red_draw, rng, geo, int(rng.integers(5, 9)), quadrant)
        _exudates(yellow_draw, rng, geo, int(rng.integers(0, 5)))
        _cotton_wool(white_draw, rng, geo, int(rng.integers(1, 5)))
    if grade == 4:
        new_vessels = rng.random() < 0.85
        if new_vessels:
            _neovascularisation(red_draw, rng, geo, at_disc=rng.random() < 0.7)
        if not new_vessels or rng.random() < 0.5:
            _preretinal_haemorrhage(red_draw, rng, geo)
    return red, yellow, white


def _field_of_view(geo: _Geometry) -> np.ndarray:
    """Opacity of the camera's aperture: a disc, flattened top and bottom on some cameras."""
    yy, xx = _grid(geo.size)
    edge = np.minimum(
        geo.radius - np.hypot(xx - geo.cx, yy - geo.cy), geo.half_height - np.abs(yy - geo.cy)
    )
    return np.clip(edge * (1.0 / 1.5) + 0.5, 0.0, 1.0)


def _camera(rgb: np.ndarray, rng: np.random.Generator, geo: _Geometry) -> Image.Image:
    """Exposure, colour cast, sensor noise, the black frame and sometimes defocus."""
    rgb *= (rng.uniform(0.8, 1.15) * rng.uniform(0.9, 1.1, 3)).astype(np.float32)
    noise = rng.standard_normal(rgb.shape, dtype=np.float32)
    noise *= rng.uniform(1.0, 4.0)
    rgb += noise
    fov = _field_of_view(geo)[..., None]
    rgb *= fov
    rgb += rng.uniform(0.0, 6.0) * (1.0 - fov)
    np.clip(rgb, 0, 255, out=rgb)
    image = Image.fromarray(rgb.astype(np.uint8), mode="RGB")
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2) * geo.scale))
    return image


def generate_fundus(grade: int, seed: int, size: int = 512) -> Image.Image:
    """A fundus-like RGB photograph showing the signs of ``grade``, identical for equal seeds."""
    if grade not in GRADES:
        raise ValueError(f"grade must be one of {GRADES}, not {grade!r}")
    if size < 64:
        raise ValueError(f"size {size} is too small to draw a fundus")
    # one stream for the eye and camera, another for the lesions: a seed is the same eye,
    # framing and exposure at every grade, and only the grade's signs differ
    eye = np.random.default_rng([seed, 0])
    lesions = np.random.default_rng([seed, 1 + grade])
    geo = _geometry(eye, size)
    rgb = _background(eye, geo)
    vessels = _vessels(eye, geo, beading=lesions if grade >= 3 else None)
    _apply(rgb, vessels, 0.6 * geo.scale, _absorb, _VESSEL_ABSORPTION)
    _optic_disc(rgb, eye, geo)
    red, yellow, white = _lesions(lesions, geo, grade)
    _apply(rgb, white, 4.0 * geo.scale, _blend, _COTTON_WOOL_RGB, 0.85)
    _apply(rgb, yellow, 0.6 * geo.scale, _blend, _EXUDATE_RGB, 0.9)
    _apply(rgb, red, 0.7 * geo.scale, _absorb, _RED_LESION_ABSORPTION)
    return _camera(rgb, eye, geo)


def encode_image(image: Image.Image, fmt: str = "jpg") -> bytes:
    """The image as file bytes in ``fmt`` ("jpg" at quality 90, or "png")."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, not {fmt!r}")
    buffer = io.BytesIO()
    options = {"quality": JPEG_QUALITY} if fmt == "jpg" else {"optimize": False}
    image.save(buffer, format=FORMATS[fmt], **options)
    return buffer.getvalue()


def image_seed(seed: int, grade: int, index: int) -> int:
    """The seed of one dataset image, so any image can be regenerated on its own."""
    return int(np.random.SeedSequence([seed, grade, index]).generate_state(1)[0])


def iter_dataset(
    per_grade: int, *, size: int = 512, seed: int = 0
) -> Iterator[tuple[str, int, Image.Image]]:
    """``(name, grade, image)`` for ``per_grade`` images of each grade, grade by grade."""
    for grade in GRADES:
        for index in range(per_grade):
            image = generate_fundus(grade, image_seed(seed, grade, index), size)
            yield f"g{grade}-{index:05d}", grade, image


def write_dataset(
    out_dir: Path, per_grade: int, *, size: int = 512, seed: int = 0, fmt: str = "jpg"
) -> list[tuple[Path, int]]:
    """Write ``<out_dir>/<grade>/<name>.<fmt>`` and ``labels.csv``; same seed, same bytes."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, not {fmt!r}")
    written: list[tuple[Path, int]] = []
    for name, grade, image in iter_dataset(per_grade, size=size, seed=seed):
        path = out_dir / str(grade) / f"{name}.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_image(image, fmt))
        written.append((path, grade))
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / LABELS_NAME).open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["filename", "grade"])
        for path, grade in written:
            writer.writerow([path.relative_to(out_dir).as_posix(), grade])
    return written
