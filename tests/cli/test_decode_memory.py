"""``python -m cli.decode_memory``: the worker's real decode path under pixel bombs, measured."""

from __future__ import annotations

import io
import json

import pytest
from click.testing import CliRunner
from PIL import Image

from cli.decode_memory import main, pixel_bomb

MIB = 1024 * 1024


def test_a_pixel_bomb_is_small_valid_and_distinct_per_tag() -> None:
    data = pixel_bomb(3000, 2000, tag="1")
    assert len(data) < 20_000
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (3000, 2000)
        image.load()
        assert image.getextrema() == ((0, 0), (0, 0), (0, 0))
    assert data != pixel_bomb(3000, 2000, tag="2")
    assert data == pixel_bomb(3000, 2000, tag="1")


@pytest.mark.slow
def test_peak_memory_stays_near_the_budget_with_more_threads_than_it_allows() -> None:
    bombs, pixels, threads = 8, 4000 * 3000, 8
    result = CliRunner().invoke(
        main,
        [
            "--threads", str(threads),
            "--bombs", str(bombs),
            "--bomb-size", "4000x3000",
            "--photos", "1",
            "--photo-size", "1200x800",
            "--max-image-pixels", str(pixels),
            "--rss-limit-mib", "4000",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert "aborted" not in figures
    assert figures["outcomes"] == {"ungradable": bombs, "gradable": 1}
    budget = figures["budget_pixels"]
    assert budget == 2 * pixels
    assert figures["budget_peak_pixels"] <= budget
    # Eight threads unbounded would hold 8 x 12 megapixels (about 370 MiB, and 650 MiB
    # measured); the budget lets two be decoded at once, 4 bytes a pixel, plus slack.
    assert figures["peak_over_start_mib"] * MIB <= 1.6 * budget * 4 + 32 * MIB
