"""Evaluation figures: real PNG files of the promised size, byte for byte reproducible."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.screening.grades import GRADE_NAMES
from lab.plots import DPI, FIGURE_INCHES, confusion_matrix_png, roc_curve_png

MATRIX = [[50, 3, 1, 0, 0], [4, 20, 2, 0, 0], [0, 2, 15, 1, 0], [0, 0, 0, 0, 0], [0, 0, 1, 2, 9]]


def _roc(path: Path) -> None:
    roc_curve_png([0, 0.1, 0.4, 1], [0, 0.7, 0.95, 1], 0.91, path, operating_point=(0.1, 0.7))


def _roc_without_point(path: Path) -> None:
    roc_curve_png(np.array([0.0, 1.0]), np.array([0.0, 1.0]), 0.5, path)


def _matrix(path: Path) -> None:
    # the empty "Severe" row must not divide by zero (warnings are errors here)
    confusion_matrix_png(MATRIX, GRADE_NAMES, path)


@pytest.mark.parametrize("draw", [_roc, _roc_without_point, _matrix])
def test_writes_a_reproducible_png_of_the_figure_size(
    draw: Callable[[Path], None], tmp_path: Path
) -> None:
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    draw(first)
    draw(second)
    with Image.open(first) as image:
        assert image.format == "PNG"
        assert image.size == (int(FIGURE_INCHES * DPI),) * 2
        image.verify()
    assert first.read_bytes() == second.read_bytes()
    assert b"Software" not in first.read_bytes()


def test_confusion_matrix_png_needs_a_name_per_class(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="5x5"):
        confusion_matrix_png([[1, 0], [0, 1]], GRADE_NAMES, tmp_path / "matrix.png")
