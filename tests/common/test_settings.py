"""Settings read from the environment, including variables renamed since a release."""

from __future__ import annotations

import pytest

from common.settings import Settings


def test_the_heat_map_queue_is_read_under_its_new_and_its_former_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().heatmap_queue_name == "retinaq.explain"
    monkeypatch.setenv("RETINAQ_EXPLAIN_QUEUE_NAME", "old-name")
    assert Settings().heatmap_queue_name == "old-name"
    monkeypatch.setenv("RETINAQ_HEATMAP_QUEUE_NAME", "new-name")
    assert Settings().heatmap_queue_name == "new-name", "the new name wins over the old"
