"""``retinaq quality-eval`` on a generated set and on a labelled folder: what it reports."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image, ImageFilter

from cli.main import cli
from common.screening.quality import MEASURES, REASONS
from lab.quality_samples import KINDS, make_sample
from lab.synthetic import generate_fundus

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
    # the spread of every measure by label, for calibrating the thresholds
    for label in ("gradable", "ungradable"):
        spreads = figures["measures"][label]
        assert set(spreads) == set(MEASURES)
        for spread in spreads.values():
            assert spread["p0"] <= spread["p5"] <= spread["p50"] <= spread["p95"] <= spread["p100"]

    assert f"precision {figures['precision']:.3f}, recall {figures['recall']:.3f}" in result.output
    assert "false ungradable, by kind: none" in result.output
    for kind in KINDS:
        assert kind in result.output


@pytest.fixture
def labelled_folder(tmp_path: Path) -> Path:
    """A programme's own labelled photographs, with the clutter real folders hold."""
    root = tmp_path / "photos"
    for index in range(3):
        _save(generate_fundus(index % 5, 10 + index, 512), root / "gradable" / f"{index}.jpg")
    _save(generate_fundus(2, 20, 700), root / "gradable" / "camera-b" / "b.jpg")
    for index in range(2):
        blurred = generate_fundus(1, 30 + index, 512).filter(ImageFilter.GaussianBlur(6))
        _save(blurred, root / "ungradable" / "blurred" / f"{index}.jpg")
    _save(make_sample("dark", 0).image, root / "ungradable" / "old-camera" / "dark.jpg")
    (root / "ungradable" / "half-copied.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (root / "gradable" / ".DS_Store").write_bytes(b"\x00\x01")
    return root


def _save(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=92)


def test_quality_eval_measures_a_programmes_own_labelled_folder(
    labelled_folder: Path, tmp_path: Path
) -> None:
    out, rows = tmp_path / "quality.json", tmp_path / "verdicts.csv"
    result = CliRunner().invoke(
        cli,
        ["quality-eval", "--folder", str(labelled_folder), "--json", str(out), "--csv", str(rows)],
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())

    assert figures["images"] == 7  # the hidden file is ignored, the broken one skipped
    assert figures["undecodable"] == ["ungradable/half-copied.jpg"]
    assert figures["confusion"] == {"tp": 3, "fp": 0, "fn": 0, "tn": 4}
    assert (figures["precision"], figures["recall"]) == (1.0, 1.0)
    assert figures["kinds"] == {
        "gradable": {"expected": None, "images": 3, "gradable": 3, "as_expected": 3},
        "gradable/camera-b": {"expected": None, "images": 1, "gradable": 1, "as_expected": 1},
        "ungradable/blurred": {"expected": "blurred", "images": 2, "gradable": 0, "as_expected": 2},
        "ungradable/old-camera": {
            "expected": "ungradable",
            "images": 1,
            "gradable": 0,
            "as_expected": 1,
        },
    }
    # only a folder named after a reason asks for that reason
    assert figures["reason_recall"] == {"blurred": {"expected": 2, "found": 2, "recall": 1.0}}
    focus = figures["measures"]
    assert focus["gradable"]["focus"]["p0"] > figures["thresholds"]["min_focus"]
    assert focus["ungradable"]["focus"]["p0"] < figures["thresholds"]["min_focus"]
    assert figures["model"].startswith("retinaq-small ")

    with rows.open(newline="") as handle:
        verdicts = list(csv.DictReader(handle))
    assert [row["image"] for row in verdicts] == [
        "gradable/0.jpg",
        "gradable/1.jpg",
        "gradable/2.jpg",
        "gradable/camera-b/b.jpg",
        "ungradable/blurred/0.jpg",
        "ungradable/blurred/1.jpg",
        "ungradable/old-camera/dark.jpg",
    ]
    dark = verdicts[-1]
    assert (dark["expected"], dark["gradable"]) == ("ungradable", "false")
    assert "underexposed" in dark["reasons"].split(";")
    assert float(dark["brightness"]) < figures["thresholds"]["min_brightness"]
    assert "skipped 1 files that did not decode: ungradable/half-copied.jpg" in result.output
    assert "gradable/camera-b" in result.output and "min_focus 0.3" in result.output


def test_set_tries_a_threshold_over_the_serving_ones(labelled_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "strict.json"
    argv = ["quality-eval", "--folder", str(labelled_folder), "--json", str(out)]
    result = CliRunner().invoke(cli, [*argv, "--set", "min_focus=0.99"])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert figures["thresholds"]["min_focus"] == 0.99
    # every sharp photograph is now refused as blurred
    assert figures["confusion"]["fp"] == 4 and figures["precision"] < 1.0
    assert figures["false_positives"]["gradable"] == {"blurred": 3}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "min_sharpness=1"], "unknown quality thresholds: min_sharpness"),
        (["--set", "min_focus"], "is not NAME=NUMBER"),
        (["--set", "min_fov_area=2"], "min_fov_area must be 0..1"),
        (["--folder", "{empty}"], "holds neither gradable/ nor ungradable/"),
        (["--folder", "{missing}"], "is not a folder"),
    ],
)
def test_quality_eval_refuses_what_it_cannot_use(
    tmp_path: Path, args: list[str], message: str
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    paths = {"{empty}": str(empty), "{missing}": str(tmp_path / "missing")}
    result = CliRunner().invoke(cli, ["quality-eval", *[paths.get(a, a) for a in args]])
    assert result.exit_code != 0
    assert message in result.output


def test_quality_eval_says_when_no_file_in_the_folder_decodes(tmp_path: Path) -> None:
    (tmp_path / "photos" / "gradable").mkdir(parents=True)
    (tmp_path / "photos" / "gradable" / "a.jpg").write_bytes(b"not a photograph")
    result = CliRunner().invoke(cli, ["quality-eval", "--folder", str(tmp_path / "photos")])
    assert result.exit_code != 0
    assert "none of the 1 files under" in result.output and "decoded" in result.output
