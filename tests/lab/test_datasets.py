"""Training sets: the APTOS, EyePACS and folder layouts, missing files, bad CSVs, preparation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.imaging.preprocessing import FundusPreprocessing
from lab.datasets import (
    DatasetError,
    FileImage,
    LabelledImages,
    aptos_images,
    eyepacs_images,
    folder_images,
    open_dataset,
    prepare_images,
    synthetic_images,
)
from lab.synthetic import encode_image, generate_fundus, iter_dataset, write_dataset

SIZE = 64  # generated photographs are tiny: parsing, not pixels, is under test here


def _photo(path: Path, grade: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "png" if path.suffix == ".png" else "jpg"
    path.write_bytes(encode_image(generate_fundus(grade, seed, SIZE), fmt))


def _csv(path: Path, header: str, rows: list[tuple[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [header, *(f"{name},{grade}" for name, grade in rows)]
    path.write_text("\n".join(lines) + "\n")


def test_aptos_matches_ids_to_images_of_any_extension_and_skips_missing(tmp_path: Path) -> None:
    _csv(
        tmp_path / "train.csv",
        "id_code,diagnosis",
        [("a1", 0), ("b2", 2), ("c3", 4), ("gone", 1)],
    )
    _photo(tmp_path / "train_images" / "a1.png", 0)
    _photo(tmp_path / "train_images" / "b2.jpg", 2)  # not APTOS's .png, still found
    _photo(tmp_path / "train_images" / "c3.PNG", 4)
    (tmp_path / "train_images" / "notes.txt").write_text("not an image")

    found = aptos_images(tmp_path)

    assert [(Path(i.name).name, i.grade) for i in found.images] == [
        ("a1.png", 0),
        ("b2.jpg", 2),
        ("c3.PNG", 4),
    ]
    assert found.missing == ("gone",)
    assert found.grades.tolist() == [0, 2, 4]
    assert found.description == (
        f"aptos {tmp_path.name}: 3 images, per grade [1, 0, 1, 0, 1], 1 missing skipped"
    )


def test_eyepacs_finds_images_under_train_or_beside_the_labels(tmp_path: Path) -> None:
    # a byte-order mark and padded header, as spreadsheets write them
    (tmp_path / "trainLabels.csv").write_text(
        "\ufeffimage, level\n10_left,0\n10_right,3\n13_left,1\n99_left,2\n", encoding="utf-8"
    )
    _photo(tmp_path / "train" / "10_left.jpeg", 0)
    _photo(tmp_path / "train" / "10_right.jpeg", 3)
    _photo(tmp_path / "13_left.jpeg", 1)

    found = eyepacs_images(tmp_path)

    assert {Path(i.name).name: i.grade for i in found.images} == {
        "10_left.jpeg": 0,
        "10_right.jpeg": 3,
        "13_left.jpeg": 1,
    }
    assert found.missing == ("99_left",)
    assert "1 missing skipped" in found.description


def test_folder_reads_grade_subfolders_in_a_stable_order(tmp_path: Path) -> None:
    written = write_dataset(tmp_path, 2, size=SIZE, seed=3, fmt="png")
    (tmp_path / "2" / "readme.md").write_text("ignored")
    (tmp_path / "7").mkdir()  # not a grade
    _photo(tmp_path / "7" / "x.png", 0)

    found = folder_images(tmp_path)

    assert [(Path(i.name), i.grade) for i in found.images] == written
    assert found.missing == ()
    assert found.description == f"folder {tmp_path.name}: 10 images, per grade [2, 2, 2, 2, 2]"


def test_synthetic_images_are_the_generators_dataset() -> None:
    found = open_dataset("synthetic", None, per_grade=2, size=SIZE, seed=4)
    expected = list(iter_dataset(2, size=SIZE, seed=4))
    assert [(i.name, i.grade) for i in found.images] == [(n, g) for n, g, _ in expected]
    assert found.images[3].read() == encode_image(expected[3][2], "jpg")
    assert "synthetic" in found.description and "seed 4" in found.description


@pytest.mark.parametrize(
    ("layout", "files", "message"),
    [
        ("aptos", {}, r"train\.csv does not exist"),
        (
            "aptos",
            {"train.csv": "id,grade\na,1\n"},
            r"has columns \['id', 'grade'\]; expected 'id_code' and 'diagnosis'",
        ),
        ("aptos", {"train.csv": "id_code,diagnosis\na,0\nb,7\n"}, r"line 3: diagnosis '7' is not"),
        ("aptos", {"train.csv": "id_code,diagnosis\na,mild\n"}, r"diagnosis 'mild' is not a grade"),
        ("aptos", {"train.csv": "id_code,diagnosis\n"}, "lists no images"),
        ("aptos", {"train.csv": "id_code,diagnosis\na,1\n"}, r"train_images/"),
        (
            "eyepacs",
            {"trainLabels.csv": "image,grade\n1_left,0\n"},
            r"expected 'image' and 'level'",
        ),
        ("eyepacs", {"trainLabels.csv": "image,level\n1_left,0\n"}, "none of the 1 images listed"),
        ("folder", {"0/readme.txt": "no images"}, r"no images found under"),
    ],
)
def test_a_broken_layout_is_rejected_with_a_clear_message(
    tmp_path: Path, layout: str, files: dict[str, str], message: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    with pytest.raises(DatasetError, match=message):
        open_dataset(layout, tmp_path)


def test_a_missing_folder_or_unknown_layout_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="is not a folder"):
        open_dataset("eyepacs", tmp_path / "absent")
    with pytest.raises(DatasetError, match="needs the dataset's folder"):
        open_dataset("aptos", None)
    with pytest.raises(DatasetError, match="must be one of"):
        open_dataset("messidor", tmp_path)


def test_prepare_images_keeps_order_skips_undecodable_and_can_memory_map(tmp_path: Path) -> None:
    synthetic = synthetic_images(2, size=SIZE, seed=1)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    images = (*synthetic.images[:3], FileImage(broken, 4), *synthetic.images[3:])
    labelled = LabelledImages(images, synthetic.origin)
    preprocessor = FundusPreprocessing(48, "rescale")
    lines: list[str] = []

    in_ram = prepare_images(
        labelled, preprocessor, max_pixels=10**7, workers=3, progress=lines.append
    )
    mapped = prepare_images(
        labelled,
        preprocessor,
        max_pixels=10**7,
        workers=1,
        cache_path=tmp_path / "cache" / "pixels.npy",
        in_memory_limit=0,
        progress=lambda _: None,
    )

    expected = np.stack(
        [preprocessor.prepare(i.read(), max_pixels=10**7) for i in synthetic.images]
    )
    assert in_ram.pixels.dtype == np.uint8 and in_ram.pixels.shape == (10, 48, 48, 3)
    np.testing.assert_array_equal(in_ram.pixels, expected)
    assert in_ram.grades.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert in_ram.undecodable == (str(broken),)
    assert "1 undecodable skipped" in in_ram.description
    assert any(line.startswith(f"skipping {broken}") for line in lines)
    assert isinstance(mapped.pixels, np.memmap)
    np.testing.assert_array_equal(mapped.pixels, in_ram.pixels)
    assert (tmp_path / "cache" / "pixels.npy").stat().st_size > 11 * 48 * 48 * 3
