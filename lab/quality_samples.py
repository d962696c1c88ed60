"""A labelled, deterministic evaluation set for the quality check: good and degraded images.

Good kinds are synthetic fundus photographs as ordinary cameras take them (cut off at the
top and bottom, DRIVE's 565 px frame, 3,504 x 2,336 JPEGs, dark pigmented and light blond
fundi, JPEG compression) and must be judged gradable. Degraded kinds each carry the one
reason :func:`common.imaging.gradability.assess_quality` should give: blur, under- and
over-exposure, a crop that leaves little of the disc, a disc far too small, and pictures that are no
fundus at all.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from common.imaging.decode import field_of_view_box
from common.screening.quality import (
    BLURRED,
    FIELD_OF_VIEW_CUT_OFF,
    NO_FIELD_OF_VIEW,
    NOT_FUNDUS,
    OVEREXPOSED,
    UNDEREXPOSED,
)
from lab.quality_eval import QualitySample
from lab.synthetic import GRADES, generate_fundus

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_SEED_LIMIT = 2**31


def _fundus(rng: np.random.Generator, size: int = 512) -> Image.Image:
    """A clean synthetic photograph of a random grade."""
    return generate_fundus(int(rng.choice(GRADES)), int(rng.integers(_SEED_LIMIT)), size)


def _array(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32)


def _image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="RGB")


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    """The image after a JPEG round trip, as a camera or an upload would leave it."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _disc_mask(pixels: np.ndarray) -> np.ndarray:
    """Soft 0..1 opacity of the field of view, so edits leave the black surround black."""
    return np.clip((pixels @ _LUMA - 10.0) / 20.0, 0.0, 1.0)[..., None]


def _luminance_in_disc(pixels: np.ndarray) -> float:
    luminance = pixels @ _LUMA
    return float(luminance[luminance > 20].mean())


# --- good: clean photographs as ordinary cameras take them ------------------------------------


def _clean(rng: np.random.Generator) -> Image.Image:
    return _fundus(rng)


def _cut_off(rng: np.random.Generator) -> Image.Image:
    """A 45° camera's disc cut off at the top and bottom (about a third of seeds are)."""
    while True:
        image = _fundus(rng)
        left, top, right, bottom = field_of_view_box(image)
        if bottom - top < 0.95 * (right - left):
            return image


def _drive_565(rng: np.random.Generator) -> Image.Image:
    """DRIVE's frame: 565 x 584 px, uncompressed."""
    canvas = Image.new("RGB", (565, 584))
    canvas.paste(_fundus(rng, 565), (0, int(rng.integers(0, 20))))
    return canvas


def _large_3500(rng: np.random.Generator) -> Image.Image:
    """A 3,504 x 2,336 JPEG with the disc as high as the frame and black either side."""
    disc = _fundus(rng, 768).resize((2336, 2336), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (3504, 2336))
    canvas.paste(disc, (int(rng.integers(400, 769)), 0))
    return _jpeg(canvas, int(rng.integers(88, 96)))


def _pigmented(rng: np.random.Generator) -> Image.Image:
    """A darker, browner fundus: less light back, and less of it red."""
    factor = rng.uniform(0.55, 0.7)
    tint = np.array([1.0, rng.uniform(1.05, 1.15), rng.uniform(1.1, 1.3)], dtype=np.float32)
    return _image(_array(_fundus(rng)) * factor * tint)


def _blond(rng: np.random.Generator) -> Image.Image:
    """A lighter, blond fundus: brighter, and paler where the choroid shows through."""
    pixels = _array(_fundus(rng)) * rng.uniform(1.15, 1.3)
    veil = rng.uniform(0.05, 0.15) * _disc_mask(pixels)
    return _image(pixels + veil * (np.array([255.0, 215.0, 175.0]) - pixels))


def _annotated(rng: np.random.Generator) -> Image.Image:
    """Burnt-in text in a corner and a surround left dark grey, as some cameras write them."""
    pixels = _array(_fundus(rng))
    pixels += (1.0 - _disc_mask(pixels)) * rng.uniform(5.0, 25.0)
    image = _image(pixels)
    draw = ImageDraw.Draw(image)
    x0, y0 = int(rng.choice((8, 380))), int(rng.choice((8, 440)))
    for line in range(int(rng.integers(2, 5))):
        x = x0
        for _ in range(int(rng.integers(2, 5))):
            word = int(rng.integers(8, 30))
            draw.rectangle([x, y0 + 14 * line, x + word, y0 + 14 * line + 8], fill=(235,) * 3)
            x += word + 5
    return image


def _compressed(rng: np.random.Generator) -> Image.Image:
    """An ordinary JPEG at a common size and quality."""
    size = int(rng.choice((512, 768, 1024)))
    return _jpeg(_fundus(rng, size), int(rng.integers(60, 86)))


def _retina_crop(rng: np.random.Generator, aspect: float) -> Image.Image:
    """The middle of a fundus, as a camera that crops to a rectangle exports it."""
    image = _fundus(rng, 768)
    left, top, right, bottom = field_of_view_box(image)
    cx, cy = (left + right) / 2, (top + bottom) / 2
    # a rectangle inscribed in the disc: its corners just inside the rim
    radius = 0.97 * min(right - left, bottom - top) / 2
    half_h = radius / np.hypot(aspect, 1.0)
    half_w = aspect * half_h
    box = (round(cx - half_w), round(cy - half_h), round(cx + half_w), round(cy + half_h))
    return image.crop(box).resize((round(512 * aspect), 512), Image.Resampling.BILINEAR)


def _rectangle(rng: np.random.Generator) -> Image.Image:
    """The retina fills a 4:3 or square frame, corners sometimes rounded or clipped black."""
    image = _retina_crop(rng, float(rng.choice((1.0, 4 / 3))))
    corner = int(rng.choice((0, 30, 60)))
    if corner:
        mask = Image.new("L", image.size, 0)
        ImageDraw.Draw(mask).rounded_rectangle([0, 0, *image.size], radius=corner, fill=255)
        image = Image.composite(image, Image.new("RGB", image.size), mask)
    return _jpeg(image, int(rng.integers(80, 95)))


def _white_bar(rng: np.random.Generator) -> Image.Image:
    """A rectangular crop, slightly defocused, with a white bar along one edge (an export's)."""
    image = _retina_crop(rng, 4 / 3).filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.0)))
    depth = int(rng.integers(20, 60))
    width, height = image.size
    edge = int(rng.integers(4))
    bar = [(0, 0, width, depth), (0, height - depth, width, height)]
    bar += [(0, 0, depth, height), (width - depth, 0, width, height)]
    canvas = image.copy()
    draw = ImageDraw.Draw(canvas)
    draw.rectangle(bar[edge], fill=tuple(int(c) for c in rng.integers(235, 256, 3)))
    return _jpeg(canvas, 90)


def _side_cut(rng: np.random.Generator) -> Image.Image:
    """A disc cut by the frame on the left and right, and at the top and bottom, with a
    small notch in its rim (the marker many cameras' masks carry)."""
    image = _notched(rng)
    left, top, right, bottom = field_of_view_box(image)
    cut = rng.uniform(0.04, 0.08) * (right - left)
    cut_v = rng.uniform(0.0, 0.06) * (bottom - top)
    return image.crop(
        (round(left + cut), round(top + cut_v), round(right - cut), round(bottom - cut_v))
    )


def _notched(rng: np.random.Generator) -> Image.Image:
    """A whole disc with a notch cut into its rim and a small bright marker beside it."""
    image = _fundus(rng)
    left, top, right, bottom = field_of_view_box(image)
    cx, cy, radius = (left + right) / 2, (top + bottom) / 2, (right - left) / 2
    angle = rng.uniform(0, 2 * np.pi)
    x, y = cx + radius * np.cos(angle), cy + radius * np.sin(angle)
    draw = ImageDraw.Draw(image)
    size = rng.uniform(8, 16)
    draw.polygon([(x - size, y), (x, y - size), (x + size, y), (x, y + size)], fill=(0, 0, 0))
    mark = cx + (radius + 6) * np.cos(angle + 0.3), cy + (radius + 6) * np.sin(angle + 0.3)
    draw.ellipse([mark[0] - 4, mark[1] - 4, mark[0] + 4, mark[1] + 4], fill=(220, 220, 220))
    return image


def _logo(rng: np.random.Generator) -> Image.Image:
    """A logo and a caption burnt in over the rim, as some cameras' exports carry."""
    image = _fundus(rng)
    left, top, right, bottom = field_of_view_box(image)
    draw = ImageDraw.Draw(image)
    x = int(rng.integers(left, right - 120))
    y = int(rng.choice((top - 10, bottom - 30)))
    draw.rectangle([x, y, x + 40, y + 40], fill=(240, 240, 240))
    draw.ellipse([x + 8, y + 8, x + 32, y + 32], fill=(30, 60, 160))
    for word in range(int(rng.integers(2, 5))):
        start = x + 50 + 22 * word
        draw.rectangle([start, y + 14, start + 18, y + 24], fill=(250, 250, 250))
    return image


def _dark_myopic(rng: np.random.Generator) -> Image.Image:
    """A dark, tessellated, highly myopic fundus (mean luminance 28-40) whose retina fades
    towards the black surround, with bright atrophy around the disc."""
    image = _fundus(rng)
    pixels = _array(image)
    left, top, right, bottom = field_of_view_box(image)
    cx, cy, radius = (left + right) / 2, (top + bottom) / 2, (right - left) / 2
    yy, xx = np.mgrid[0 : image.height, 0 : image.width].astype(np.float32)
    fall = np.clip(1.0 - 0.6 * (np.hypot(xx - cx, yy - cy) / radius) ** 2, 0.3, 1.0)
    stripes = 1.0 + 0.2 * np.sin(xx * 0.35 + 3 * np.sin(yy * 0.05))[..., None]
    pixels *= fall[..., None] * stripes
    pixels *= rng.uniform(28.0, 40.0) / _luminance_in_disc(pixels)
    # the atrophy: a pale crescent beside the disc, brighter than anything else
    side = 1 if rng.random() < 0.5 else -1
    ax, ay = cx + side * 0.38 * radius, cy
    atrophy = np.clip(1.0 - np.hypot(xx - ax, (yy - ay) * 0.8) / (0.16 * radius), 0.0, 1.0)
    pixels += (atrophy**0.5)[..., None] * (np.array([235.0, 200.0, 150.0]) - pixels)
    return _image(pixels)


# --- degraded: each fails for one reason -----------------------------------------------------


def _blurred(rng: np.random.Generator) -> Image.Image:
    """Defocus of 3 to 6 px at 512 px, then the sensor's noise and a JPEG."""
    size = int(rng.choice((512, 768)))
    sigma = float(rng.choice((3.0, 4.5, 6.0))) * size / 512
    pixels = _array(_fundus(rng, size).filter(ImageFilter.GaussianBlur(sigma)))
    pixels += rng.normal(0.0, 1.5, pixels.shape).astype(np.float32) * _disc_mask(pixels)
    return _jpeg(_image(pixels), 90)


def _rectangle_blurred(rng: np.random.Generator) -> Image.Image:
    """A rectangular crop out of focus: defocus of 3 to 6 px at 512 px."""
    image = _retina_crop(rng, float(rng.choice((1.0, 4 / 3))))
    return _jpeg(image.filter(ImageFilter.GaussianBlur(float(rng.choice((3.0, 4.5, 6.0))))), 90)


def _rectangle_dark(rng: np.random.Generator) -> Image.Image:
    """A rectangular crop with too little light: mean luminance 5..15."""
    pixels = _array(_retina_crop(rng, 4 / 3))
    pixels *= rng.uniform(5.0, 15.0) / _luminance_in_disc(pixels)
    return _image(pixels + rng.normal(0.0, 1.0, pixels.shape).astype(np.float32))


def _side_cut_off_centre(rng: np.random.Generator) -> Image.Image:
    """A notched disc whose centre the camera left near a side: under half of it shows."""
    image = _notched(rng)
    left, top, right, bottom = field_of_view_box(image)
    width = right - left
    shift = rng.uniform(0.55, 0.75) * width
    box = (round(left + shift), top, round(left + shift + width), bottom)
    return (
        image.crop(box)
        if rng.random() < 0.5
        else image.crop(box).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    )


def _dark(rng: np.random.Generator) -> Image.Image:
    """Too little light: the retina's mean luminance brought down to 5..15 of 255."""
    pixels = _array(_fundus(rng))
    pixels *= rng.uniform(5.0, 15.0) / _luminance_in_disc(pixels)
    pixels += rng.normal(0.0, 1.0, pixels.shape).astype(np.float32)
    return _image(pixels)


def _overexposed(rng: np.random.Generator) -> Image.Image:
    """Too much flash: the channels clip and a white veil washes the retina out."""
    pixels = _array(_fundus(rng))
    disc = _disc_mask(pixels)
    flashed = np.clip(pixels * rng.uniform(2.5, 4.0), 0, 255)
    flashed += rng.uniform(0.3, 0.6) * (255.0 - flashed)
    # the black surround gets no light, however strong the flash
    return _image(disc * flashed + (1.0 - disc) * pixels)


def _off_centre(rng: np.random.Generator) -> Image.Image:
    """A crop that leaves under half of the disc in the picture, as from a misaimed camera."""
    image = _fundus(rng)
    disc = _array(image) @ _LUMA > 20
    left, top, right, bottom = field_of_view_box(image)
    cx, cy = (left + right) / 2, (top + bottom) / 2
    while True:
        side = rng.uniform(0.5, 0.8) * image.width
        # put the disc's centre near one edge or corner of the crop
        u, v = rng.choice((-0.05, 0.0, 0.05, 0.5, 0.95, 1.0, 1.05), size=2)
        if 0.2 < u < 0.8 and 0.2 < v < 0.8:
            continue
        x0, y0 = round(cx - u * side), round(cy - v * side)
        box = (x0, y0, x0 + round(side), y0 + round(side))
        shown = disc[max(0, y0) : max(0, box[3]), max(0, x0) : max(0, box[2])]
        if shown.sum() <= 0.5 * disc.sum() and shown.mean() < 0.9:
            return image.crop(box).resize((512, 512), Image.Resampling.BILINEAR)


def _small_disc(rng: np.random.Generator) -> Image.Image:
    """A disc far too small for the frame: the camera was nowhere near the eye."""
    side = int(rng.integers(60, 130))
    canvas = Image.new("RGB", (512, 512))
    canvas.paste(_fundus(rng, 256).resize((side, side)), tuple(rng.integers(0, 512 - side, 2)))
    return canvas


def _document(rng: np.random.Generator) -> Image.Image:
    """Lines of dark word-shaped blocks on a white page, sometimes on a dark desk."""
    width, height = 512, int(rng.integers(600, 724))
    page = Image.new("RGB", (width, height), tuple(int(c) for c in rng.integers(225, 256, 3)))
    draw = ImageDraw.Draw(page)
    y = int(rng.integers(30, 60))
    while y < height - 40:
        x = int(rng.integers(30, 50))
        while x < width - 60:
            word = int(rng.integers(15, 70))
            ink = int(rng.integers(0, 80))
            draw.rectangle([x, y, x + word, y + 9], fill=(ink, ink, ink))
            x += word + int(rng.integers(6, 12))
        y += int(rng.integers(18, 26))
    if rng.random() < 0.5:
        return page
    desk = Image.new("RGB", (int(width * 1.3), int(height * 1.2)), (12, 10, 8))
    desk.paste(page.rotate(float(rng.uniform(-8, 8)), expand=True), (40, 30))
    desk.thumbnail((640, 640))
    return desk


def _landscape(rng: np.random.Generator) -> Image.Image:
    """A sky gradient over green hills, with a sun, clouds and a few trees."""
    width, height = 640, 480
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    top = rng.uniform((40, 90, 170), (90, 140, 230))
    bottom = rng.uniform((150, 190, 220), (200, 225, 250))
    sky = top + rows * (bottom - top)
    image = _image(np.broadcast_to(sky, (height, width, 3)))
    draw = ImageDraw.Draw(image)
    sun = rng.uniform((60, 40), (580, 160))
    draw.ellipse([*(sun - 30), *(sun + 30)], fill=(255, 240, 180))
    for _ in range(int(rng.integers(2, 5))):
        cloud = rng.uniform((0, 20), (width, 200))
        draw.ellipse([*(cloud - (60, 20)), *(cloud + (60, 20))], fill=(245, 245, 250))
    horizon = int(rng.integers(240, 340))
    hills = [(0, height), (0, horizon)]
    hills += [(x, horizon + int(rng.integers(-40, 40))) for x in range(0, width + 80, 80)]
    hills += [(width, height)]
    draw.polygon(hills, fill=tuple(int(c) for c in rng.uniform((40, 100, 30), (90, 160, 70))))
    for _ in range(int(rng.integers(3, 9))):
        x, y = int(rng.integers(0, width)), int(rng.integers(horizon, height))
        draw.rectangle([x - 3, y - 10, x + 3, y + 20], fill=(90, 60, 30))
        draw.ellipse([x - 18, y - 45, x + 18, y - 5], fill=(30, 90, 35))
    return image


def _grey_noise(rng: np.random.Generator) -> Image.Image:
    """A grey, blotchy texture such as a wall or a lens cap in poor light."""
    coarse = rng.normal(0.0, 1.0, (int(rng.integers(6, 24)),) * 2).astype(np.float32)
    texture = Image.fromarray(coarse, mode="F").resize((512, 512), Image.Resampling.BICUBIC)
    grey = rng.uniform(60, 180) + rng.uniform(15, 45) * np.asarray(texture)
    grey = grey + rng.normal(0.0, rng.uniform(2, 12), grey.shape)
    return _image(np.repeat(grey[..., None], 3, axis=2))


def _coloured_scene(rng: np.random.Generator) -> Image.Image:
    """Overlapping blue and green shapes on a blue or green ground: water, grass, sky."""
    hues = np.array([[30, 90, 200], [40, 160, 70], [20, 130, 150], [90, 140, 230], [10, 70, 40]])
    image = Image.new("RGB", (512, 512), tuple(int(c) for c in hues[rng.integers(len(hues))]))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(5, 15))):
        colour = hues[rng.integers(len(hues))] + rng.integers(-20, 21, 3)
        x0, y0 = rng.integers(-100, 512, 2)
        x1, y1 = (x0, y0) + rng.integers(40, 300, 2)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([int(x0), int(y0), int(x1), int(y1)], fill=tuple(int(c) for c in colour))
    return image.filter(ImageFilter.GaussianBlur(1.0))


def _solid_colour(rng: np.random.Generator) -> Image.Image:
    """One flat colour, any but near-black, with a little sensor noise."""
    colour = rng.uniform(30, 255, 3)
    pixels = np.broadcast_to(colour, (384, 512, 3)) + rng.normal(0.0, 2.0, (384, 512, 3))
    return _image(pixels)


def _red_texture(rng: np.random.Generator) -> Image.Image:
    """A fundus-coloured texture that fills the frame: no round disc on a black surround."""
    coarse = rng.normal(0.0, 1.0, (8, 8)).astype(np.float32)
    texture = Image.fromarray(coarse, mode="F").resize((512, 512), Image.Resampling.BICUBIC)
    shade = 1.0 + 0.15 * np.asarray(texture)[..., None]
    base = rng.uniform((170, 60, 20), (235, 110, 55))
    pixels = shade * base + rng.normal(0.0, 3.0, (512, 512, 3))
    return _image(pixels)


Maker = Callable[[np.random.Generator], Image.Image]
# kind -> (the reason it must be rejected for, or None when it is gradable; its maker)
KINDS: dict[str, tuple[str | None, Maker]] = {
    "clean": (None, _clean),
    "cut_off": (None, _cut_off),
    "drive_565": (None, _drive_565),
    "large_3500": (None, _large_3500),
    "pigmented": (None, _pigmented),
    "blond": (None, _blond),
    "annotated": (None, _annotated),
    "jpeg": (None, _compressed),
    "rectangle": (None, _rectangle),
    "white_bar": (None, _white_bar),
    "side_cut": (None, _side_cut),
    "notched": (None, _notched),
    "logo": (None, _logo),
    "dark_myopic": (None, _dark_myopic),
    "blurred": (BLURRED, _blurred),
    "dark": (UNDEREXPOSED, _dark),
    "rectangle_dark": (UNDEREXPOSED, _rectangle_dark),
    "rectangle_blurred": (BLURRED, _rectangle_blurred),
    "side_cut_off_centre": (FIELD_OF_VIEW_CUT_OFF, _side_cut_off_centre),
    "overexposed": (OVEREXPOSED, _overexposed),
    "off_centre": (FIELD_OF_VIEW_CUT_OFF, _off_centre),
    "small_disc": (NO_FIELD_OF_VIEW, _small_disc),
    "document": (NOT_FUNDUS, _document),
    "landscape": (NOT_FUNDUS, _landscape),
    "grey_noise": (NOT_FUNDUS, _grey_noise),
    "coloured_scene": (NOT_FUNDUS, _coloured_scene),
    "solid_colour": (NOT_FUNDUS, _solid_colour),
    "red_texture": (NOT_FUNDUS, _red_texture),
}


def make_sample(kind: str, index: int, seed: int = 0) -> QualitySample:
    """One sample of ``kind``, the same for the same ``(kind, index, seed)``."""
    expected, maker = KINDS[kind]
    rng = np.random.default_rng([seed, list(KINDS).index(kind), index])
    return QualitySample(kind, maker(rng), expected, ungradable=expected is not None)


def iter_quality_samples(per_kind: int, seed: int = 0) -> Iterator[QualitySample]:
    """``per_kind`` samples of every kind in :data:`KINDS`, kind by kind."""
    for kind in KINDS:
        for index in range(per_kind):
            yield make_sample(kind, index, seed)
