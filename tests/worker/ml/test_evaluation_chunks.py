"""``grade_set`` works through a set a chunk at a time and gets what one pass would get."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import ImageFilter

from lab.datasets import FileImage, LabelledImages
from lab.synthetic import generate_fundus
from worker.ml import evaluation
from worker.ml.model import load_model


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> LabelledImages:
    """Eleven photographs of every grade, one blurred and one that is not an image at all."""
    folder = tmp_path_factory.mktemp("set")
    images = []
    for index in range(11):
        grade = index % 5
        picture = generate_fundus(grade, 100 + index, 384)
        if index == 6:
            picture = picture.filter(ImageFilter.GaussianBlur(6))
        path = folder / f"{index}.jpg"
        picture.save(path, quality=92)
        images.append(FileImage(path, grade))
    broken = folder / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    images.insert(4, FileImage(broken, 2))
    return LabelledImages(tuple(images), origin="test")


def test_chunks_give_the_same_grades_as_one_pass(
    labelled: LabelledImages, bundled_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_model(bundled_model_path, batch_size=evaluation.BATCH_SIZE)
    lines: list[str] = []
    whole = evaluation.grade_set(model, labelled, quality=True, progress=lambda _: None)
    monkeypatch.setattr(evaluation, "CHUNK_SIZE", 4)
    chunked = evaluation.grade_set(model, labelled, quality=True, progress=lines.append)

    assert (chunked.undecodable, chunked.reasons) == (1, {"blurred": 1})
    assert chunked.grades.tolist() == [i % 5 for i in range(11)]
    assert chunked.gradable.tolist() == [i != 6 for i in range(11)]
    np.testing.assert_array_equal(chunked.grades, whole.grades)
    np.testing.assert_array_equal(chunked.gradable, whole.gradable)
    np.testing.assert_allclose(chunked.probabilities, whole.probabilities, atol=1e-5)
    assert np.isnan(chunked.probabilities[6]).all()
    assert not np.isnan(np.delete(chunked.probabilities, 6, axis=0)).any()
    # progress after each chunk but the last, then the summary
    assert lines[:2] == ["graded 4 of 12 images", "graded 8 of 12 images"]
    assert lines[-1].startswith("graded 10 gradable of 11 decodable images (1 undecodable)")
