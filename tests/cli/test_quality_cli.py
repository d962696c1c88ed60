"""``retinaq quality-eval`` on a small generated set: the figures it prints and writes."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from cli.main import cli
from common.quality import REASONS
from common.quality_samples import KINDS

PER_KIND = 3


def test_quality_eval_reports_high_precision_and_recall(tmp_path: Path) -> None:
    out = tmp_path / "figures" / "quality.json"
    result = CliRunner().invoke(
        cli, ["quality-eval", "--per-kind", str(PER_KIND), "--seed", "1", "--json", str(out)]
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())

    assert figures["images"] == PER_KIND * len(KINDS)
    assert set(figures["kinds"]) == set(KINDS)
    assert all(row["images"] == PER_KIND for row in figures["kinds"].values())
    confusion = figures["confusion"]
    assert sum(confusion.values()) == figures["images"]
    assert figures["precision"] >= 0.95
    assert figures["recall"] >= 0.95
    assert set(figures["reason_recall"]) == set(REASONS)
    assert all(row["recall"] >= 0.66 for row in figures["reason_recall"].values())
    assert figures["false_positives"] == {}
    assert 0 < figures["ms_per_image"] < 200

    assert f"precision {figures['precision']:.3f}, recall {figures['recall']:.3f}" in result.output
    assert "false ungradable, by kind: none" in result.output
    for kind in KINDS:
        assert kind in result.output
