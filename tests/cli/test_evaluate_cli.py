"""``retinaq evaluate``: the bundled model measured through the serving path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image, ImageFilter

from cli.main import cli
from common.modelling.manifest import load_verified_manifest
from lab.synthetic import generate_fundus, write_dataset


@pytest.fixture
def model_dir(tmp_path: Path, bundled_model_path: Path) -> Path:
    """A copy of the bundled model whose manifest the command may rewrite."""
    folder = tmp_path / "model"
    shutil.copytree(bundled_model_path.parent, folder)
    return folder


def test_evaluate_reports_metrics_and_plots_for_a_folder(model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_dataset(data, 6, size=512, seed=9)
    blurred = generate_fundus(0, 999, 512).filter(ImageFilter.GaussianBlur(6))
    blurred.save(data / "0" / "blurred.jpg")
    out = tmp_path / "report"
    result = CliRunner().invoke(
        cli, ["evaluate", str(model_dir), str(data), "--out", str(out), "--resamples", "200"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "evaluation.json").read_text())
    assert (report["images"], report["gradable"], report["ungradable"]) == (31, 30, 1)
    assert report["ungradable_reasons"] == {"blurred": 1}
    assert report["ungradable_rate"] == pytest.approx(1 / 31, abs=1e-4)
    assert sum(map(sum, report["confusion_matrix"])) == 30
    kappa = report["quadratic_weighted_kappa"]
    assert kappa["low"] <= kappa["value"] <= kappa["high"] and kappa["value"] > 0.8
    referable = report["referable"]
    assert (
        referable["threshold"]
        == load_verified_manifest(model_dir / "model.keras").referable_threshold
    )
    assert (referable["positives"], referable["negatives"]) == (18, 12)
    assert set(report["per_grade"]) == {"No DR", "Mild", "Moderate", "Severe", "Proliferative"}
    for name in ("roc.png", "confusion.png"):
        with Image.open(out / name) as plot:
            assert plot.format == "PNG"
    assert "QWK" in result.output and "sensitivity" in result.output


def test_target_sensitivity_writes_the_operating_point_into_the_manifest(
    model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    result = CliRunner().invoke(
        cli,
        [
            "evaluate",
            str(model_dir / "model.keras"),
            "--per-grade",
            "8",
            "--target-sensitivity",
            "0.95",
            "--resamples",
            "200",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "evaluation.json").read_text())
    point = report["operating_point"]
    assert point["sensitivity"] >= 0.95 and point["validation_images"] == 20
    assert report["images"] == 20, "the report covers the images that did not choose"
    manifest = load_verified_manifest(model_dir / "model.keras")  # the file still matches
    assert manifest.referable_threshold == point["threshold"] == report["referable"]["threshold"]
    assert manifest.metrics["operating_point"] == point


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "aptos"], "needs the dataset's folder"),
        (["--data", "eyepacs", "{data}"], "trainLabels.csv"),
    ],
)
def test_evaluate_refuses_a_bad_dataset(
    model_dir: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    data = tmp_path / "empty"
    data.mkdir()
    argv = ["evaluate", str(model_dir), *[a.replace("{data}", str(data)) for a in args]]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code != 0
    assert message in result.output
