"""Heatmap overlays: right size, fundus still visible, hot spots coloured, stable bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from worker.grading.overlay import render_overlay


def _fundus(size: int = 96) -> np.ndarray:
    """An orange disc on black, like a prepared fundus input."""
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.45) ** 2
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[inside] = (190, 90, 40)
    return pixels


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _hot_centre(size: int = 12) -> np.ndarray:
    heat = np.zeros((size, size), dtype=np.float32)
    heat[size // 2 - 1 : size // 2 + 1, size // 2 - 1 : size // 2 + 1] = 1.0
    return heat


@pytest.mark.parametrize("heat_size", [96, 12, 200])
def test_png_has_the_image_size_whatever_the_heatmap_size(heat_size: int) -> None:
    image = _decode(render_overlay(_fundus(96), np.full((heat_size, heat_size), 0.5)))
    assert image.format == "PNG"
    assert image.mode == "RGB"
    assert image.size == (96, 96)


def test_non_square_image_keeps_width_and_height() -> None:
    pixels = np.full((60, 100, 3), 120, dtype=np.uint8)
    assert _decode(render_overlay(pixels, _hot_centre())).size == (100, 60)


def test_zero_heat_leaves_the_image_unchanged() -> None:
    pixels = _fundus()
    out = np.asarray(_decode(render_overlay(pixels, np.zeros((12, 12)))))
    np.testing.assert_array_equal(out, pixels)


def test_hot_region_is_coloured_and_cold_region_is_not() -> None:
    pixels = _fundus()
    out = np.asarray(_decode(render_overlay(pixels, _hot_centre()))).astype(int)
    change = np.abs(out - pixels.astype(int)).sum(axis=2)
    assert change[48, 48] > 60  # the centre takes on the colormap's red
    assert change[48, 10] == 0  # inside the disc, far from the heat


def test_black_border_stays_black_under_heat() -> None:
    pixels = _fundus()
    out = np.asarray(_decode(render_overlay(pixels, np.ones((12, 12)), alpha=1.0)))
    assert out[:3, :3].max() <= 10
    assert out[48, 48].tolist() != pixels[48, 48].tolist()


def test_alpha_zero_draws_nothing() -> None:
    pixels = _fundus()
    out = np.asarray(_decode(render_overlay(pixels, np.ones((12, 12)), alpha=0.0)))
    np.testing.assert_array_equal(out, pixels)


def test_equal_inputs_give_equal_bytes_and_no_metadata() -> None:
    first = render_overlay(_fundus(), _hot_centre(), colormap="magma")
    assert first == render_overlay(_fundus(), _hot_centre(), colormap="magma")
    assert first != render_overlay(_fundus(), _hot_centre())
    assert _decode(first).info == {}


@pytest.mark.parametrize(
    ("pixels", "heatmap", "kwargs"),
    [
        (np.zeros((32, 32), np.uint8), np.zeros((4, 4)), {}),
        (np.zeros((32, 32, 4), np.uint8), np.zeros((4, 4)), {}),
        (np.zeros((32, 32, 3), np.float32), np.zeros((4, 4)), {}),
        (np.zeros((32, 32, 3), np.uint8), np.zeros((4, 4, 1)), {}),
        (np.zeros((32, 32, 3), np.uint8), np.zeros((0, 4)), {}),
        (np.zeros((32, 32, 3), np.uint8), np.full((4, 4), np.nan), {}),
        (np.zeros((32, 32, 3), np.uint8), np.full((4, 4), 1.5), {}),
        (np.zeros((32, 32, 3), np.uint8), np.full((4, 4), -0.1), {}),
        (np.zeros((32, 32, 3), np.uint8), np.zeros((4, 4)), {"alpha": 1.2}),
        (np.zeros((32, 32, 3), np.uint8), np.zeros((4, 4)), {"colormap": "no-such-map"}),
    ],
    ids=[
        "grey-image",
        "rgba-image",
        "float-image",
        "3d-heatmap",
        "empty-heatmap",
        "nan-heat",
        "heat-above-one",
        "negative-heat",
        "alpha-above-one",
        "unknown-colormap",
    ],
)
def test_bad_inputs_raise_value_error(
    pixels: np.ndarray, heatmap: np.ndarray, kwargs: dict[str, object]
) -> None:
    with pytest.raises(ValueError):
        render_overlay(pixels, heatmap, **kwargs)  # type: ignore[arg-type]
