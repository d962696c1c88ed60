"""Synthetic fundus images: deterministic, fundus-shaped, and with more lesions per grade."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.imaging.decode import FIELD_OF_VIEW_THRESHOLD, field_of_view_box
from common.imaging.preprocessing import FundusPreprocessing
from lab.synthetic import GRADES, encode_image, generate_fundus, image_seed, write_dataset

SIZE = 256


def _pixels(grade: int, seed: int, size: int = SIZE) -> np.ndarray:
    return np.asarray(generate_fundus(grade, seed, size), dtype=np.int32)


def _lesion_pixels(grade: int, seed: int) -> int:
    """Pixels that differ clearly from the same eye at grade 0 (same seed: same eye)."""
    return int((np.abs(_pixels(grade, seed) - _pixels(0, seed)).sum(axis=-1) > 40).sum())


@pytest.mark.parametrize("grade", GRADES)
def test_same_seed_gives_identical_pixels(grade: int) -> None:
    first = generate_fundus(grade, 11, SIZE)
    second = generate_fundus(grade, 11, SIZE)
    assert first.mode == "RGB" and first.size == (SIZE, SIZE)
    assert first.tobytes() == second.tobytes()


def test_different_seeds_give_different_images() -> None:
    images = [generate_fundus(2, seed, SIZE).tobytes() for seed in range(4)]
    assert len(set(images)) == 4


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_higher_grades_have_more_lesion_pixels(seed: int) -> None:
    counts = [_lesion_pixels(grade, seed) for grade in GRADES]
    assert counts[0] == 0
    assert 0 < counts[1] < counts[2] < counts[3]
    assert counts[4] > counts[2]


def test_mild_shows_only_small_dark_red_dots() -> None:
    mild, clean = _pixels(1, 5), _pixels(0, 5)
    changed = np.abs(mild - clean).sum(axis=-1) > 40
    assert 0 < changed.sum() < 0.01 * SIZE * SIZE
    # microaneurysms darken, and darken green more than red: they stay red
    assert (mild[changed].sum(axis=-1) < clean[changed].sum(axis=-1)).all()
    assert (mild[changed][:, 0] >= mild[changed][:, 1]).all()


@pytest.mark.parametrize("grade,seed", [(0, 0), (2, 3), (4, 9), (1, 21), (3, 40)])
def test_background_corners_are_dark_and_the_disc_bright(grade: int, seed: int) -> None:
    pixels = _pixels(grade, seed)
    corner = SIZE // 16
    for patch in (
        pixels[:corner, :corner],
        pixels[:corner, -corner:],
        pixels[-corner:, :corner],
        pixels[-corner:, -corner:],
    ):
        assert patch.max() < FIELD_OF_VIEW_THRESHOLD
    middle = pixels[SIZE * 3 // 8 : SIZE * 5 // 8, SIZE * 3 // 8 : SIZE * 5 // 8]
    red, green, blue = (middle[..., c].mean() for c in range(3))
    assert red > 90
    assert red > green > blue  # orange-red retina


@pytest.mark.parametrize("seed", range(6))
def test_field_of_view_is_found_by_the_serving_preprocessing(seed: int) -> None:
    image = generate_fundus(seed % 5, seed, 512)
    left, top, right, bottom = field_of_view_box(image)
    assert 0.8 * 512 < right - left < 0.99 * 512
    assert 0.65 * 512 < bottom - top <= right - left + 8
    prepared = FundusPreprocessing(128, "rescale").prepare(
        encode_image(image, "jpg"), max_pixels=10**7
    )
    assert prepared.shape == (128, 128, 3)
    assert prepared[64, 64].sum() > 3 * FIELD_OF_VIEW_THRESHOLD


def test_sizes_scale_the_same_eye() -> None:
    small = generate_fundus(3, 7, 128)
    large = generate_fundus(3, 7, 512).resize((128, 128), Image.Resampling.BOX)
    difference = np.abs(np.asarray(small, np.int32) - np.asarray(large, np.int32))
    assert small.size == (128, 128)
    assert np.median(difference) < 25


@pytest.mark.parametrize("bad", [-1, 5])
def test_unknown_grade_is_rejected(bad: int) -> None:
    with pytest.raises(ValueError, match="grade"):
        generate_fundus(bad, 0)


def test_write_dataset_layout_labels_and_determinism(tmp_path: Path) -> None:
    first = write_dataset(tmp_path / "a", 2, size=96, seed=3)
    second = write_dataset(tmp_path / "b", 2, size=96, seed=3)
    assert [grade for _, grade in first] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    for (path_a, grade), (path_b, _) in zip(first, second, strict=True):
        assert path_a.parent == tmp_path / "a" / str(grade)
        assert path_a.suffix == ".jpg"
        assert path_a.read_bytes() == path_b.read_bytes()
        with Image.open(path_a) as image:
            assert image.format == "JPEG" and image.size == (96, 96)
    with (tmp_path / "a" / "labels.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(row["filename"], int(row["grade"])) for row in rows] == [
        (path.relative_to(tmp_path / "a").as_posix(), grade) for path, grade in first
    ]
    assert (tmp_path / "a" / "labels.csv").read_bytes() == (
        tmp_path / "b" / "labels.csv"
    ).read_bytes()


def test_write_dataset_png_and_seed_changes_images(tmp_path: Path) -> None:
    png = write_dataset(tmp_path / "png", 1, size=80, seed=0, fmt="png")
    other = write_dataset(tmp_path / "other", 1, size=80, seed=1, fmt="png")
    assert all(path.suffix == ".png" for path, _ in png)
    with Image.open(png[0][0]) as image:
        assert image.format == "PNG"
        assert image.tobytes() == generate_fundus(0, image_seed(0, 0, 0), 80).tobytes()
    assert png[0][0].read_bytes() != other[0][0].read_bytes()


def test_unknown_format_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format"):
        write_dataset(tmp_path, 1, size=64, fmt="gif")
    assert not any(tmp_path.iterdir())
