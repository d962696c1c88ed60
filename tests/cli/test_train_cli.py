"""``retinaq train`` end to end on tiny sets: every data layout, both heads, clear errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner, Result

from cli.main import cli
from cli.modelling import ARCHITECTURES
from common.modelling.manifest import ModelManifest, load_verified_manifest
from lab.synthetic import encode_image, generate_fundus, write_dataset

PER_GRADE = 4
TINY = ["--epochs", "1", "--input-size", "64", "--batch-size", "8"]


def _photos(count: int) -> list[tuple[str, int, bytes]]:
    """``count`` small synthetic photographs of each grade: (id, grade, PNG bytes)."""
    return [
        (f"img{grade}{index:02d}", grade, encode_image(generate_fundus(grade, index, 96), "png"))
        for grade in range(5)
        for index in range(count)
    ]


def _aptos(root: Path) -> None:
    """APTOS 2019: train.csv with id_code,diagnosis; train_images/<id>.png; one row missing."""
    (root / "train_images").mkdir(parents=True)
    rows = ["id_code,diagnosis"]
    for name, grade, data in _photos(PER_GRADE):
        (root / "train_images" / f"{name}.png").write_bytes(data)
        rows.append(f"{name},{grade}")
    rows.append("lost0001,3")
    (root / "train.csv").write_text("\n".join(rows) + "\n")


def _eyepacs(root: Path) -> None:
    """EyePACS: trainLabels.csv with image,level; JPEGs under train/."""
    (root / "train").mkdir(parents=True)
    rows = ["image,level"]
    for index in range(5 * PER_GRADE):
        eye, grade = f"{index // 2}_{'left' if index % 2 else 'right'}", index % 5
        image = generate_fundus(grade, 100 + index, 96)
        (root / "train" / f"{eye}.jpeg").write_bytes(encode_image(image, "jpg"))
        rows.append(f"{eye},{grade}")
    (root / "trainLabels.csv").write_text("\n".join(rows) + "\n")


def _folder(root: Path) -> None:
    """<grade>/<image> folders, and one file that is no image at all."""
    write_dataset(root, PER_GRADE, size=96, seed=2, fmt="jpg")
    (root / "0" / "broken.jpg").write_bytes(b"not an image")


def _train(*args: str) -> Result:
    return CliRunner().invoke(cli, ["train", *args], catch_exceptions=False)


def _trained(out: Path, result: Result) -> tuple[ModelManifest, keras.Model]:
    assert result.exit_code == 0, result.output
    assert "epoch   1/1" in result.output
    assert f"wrote {out / 'model.keras'}" in result.output
    model_path = out / "model.keras"
    return load_verified_manifest(model_path), keras.saving.load_model(model_path, compile=False)


def _grade(manifest: ModelManifest, model: keras.Model) -> np.ndarray:
    preprocessor = manifest.preprocessor
    photos = [encode_image(generate_fundus(g, 500 + g, 128)) for g in range(5)]
    pixels = np.stack([preprocessor.prepare(data, max_pixels=10**7) for data in photos])
    return np.asarray(model.predict(preprocessor.normalise(pixels), verbose=0))


def test_train_with_no_options_but_size_trains_the_small_cnn_on_synthetic_images(
    tmp_path: Path,
) -> None:
    out = tmp_path / "model"
    result = _train("--out", str(out), "--per-grade", str(PER_GRADE), *TINY)

    manifest, model = _trained(out, result)
    assert (manifest.architecture, manifest.head, manifest.name) == (
        "small",
        "softmax",
        "retinaq-small",
    )
    assert (manifest.input_size, manifest.preprocessing, manifest.ben_graham) == (
        64,
        "rescale",
        False,
    )
    assert manifest.training_data.startswith("synthetic (lab.synthetic seed 0, 4 JPEG")
    assert manifest.metrics["held_out_images"] == 5
    assert (out / "checkpoints" / "best.keras").is_file()
    probabilities = _grade(manifest, model)
    assert probabilities.shape == (5, 5)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("layout", "write", "expected"),
    [
        ("aptos", _aptos, "aptos data: 20 images, per grade [4, 4, 4, 4, 4], 1 missing skipped"),
        ("eyepacs", _eyepacs, "eyepacs data: 20 images, per grade [4, 4, 4, 4, 4]"),
    ],
)
def test_train_reads_a_kaggle_layout(
    tmp_path: Path, layout: str, write: Callable[[Path], None], expected: str
) -> None:
    write(tmp_path / "data")
    out = tmp_path / "model"
    result = _train("--data", layout, str(tmp_path / "data"), "--out", str(out), *TINY)

    manifest, model = _trained(out, result)
    assert manifest.training_data.startswith(expected)
    assert manifest.metrics["held_out_images"] == 5
    if layout == "aptos":
        assert "no file for 1 listed images, skipped: lost0001" in result.output
    assert model.output_shape == (None, 5)


def test_train_a_regression_head_with_ben_graham_on_a_folder(tmp_path: Path) -> None:
    _folder(tmp_path / "data")
    out = tmp_path / "model"
    result = _train(
        "--data",
        "folder",
        str(tmp_path / "data"),
        "--out",
        str(out),
        "--head",
        "regression",
        "--ben-graham",
        "--balance",
        "sampling",
        *TINY,
    )

    manifest, model = _trained(out, result)
    assert (manifest.architecture, manifest.head, manifest.name) == (
        "small",
        "regression",
        "retinaq-small-regression",
    )
    assert manifest.ben_graham and "ben_graham" in manifest.preprocessing_steps
    assert manifest.training_data.startswith("folder data: 20 images")
    assert "1 undecodable skipped" in manifest.training_data
    assert f"skipping {tmp_path / 'data' / '0' / 'broken.jpg'}: " in result.output
    assert "grade-balanced batches" in manifest.training_data
    probabilities = _grade(manifest, model)
    assert probabilities.shape == (5, 5) and probabilities.min() >= 0.0
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    thresholds = keras.ops.convert_to_numpy(model.get_layer("grades").thresholds())
    assert np.all(np.diff(thresholds) > 0)
    assert manifest.metrics["ordinal_thresholds"] == pytest.approx(thresholds.tolist(), abs=1e-4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "aptos", "{tmp}/absent"], "does not exist"),
        (["--data", "aptos"], "--data aptos needs DATA_DIR"),
        (["{tmp}"], "DATA_DIR is read with --data aptos, eyepacs or folder"),
        (["--data", "folder", "{tmp}", "--per-grade", "3"], "--per-grade sets the number"),
        (["--arch", "resnet50", "--input-size", "64"], "takes its standard input size"),
        (["--arch", "vgg16", "--weights", "{tmp}/absent.h5"], "'{tmp}/absent.h5' does not exist"),
        (["--weights", "{tmp}/labels.csv"], "--weights loads into a backbone"),
        (["--arch", "alexnet"], "'alexnet' is not one of"),
    ],
)
def test_usage_errors_are_click_errors(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "labels.csv").write_text("x\n")
    result = CliRunner().invoke(
        cli, ["train", "--out", str(tmp_path / "out"), *(a.format(tmp=tmp_path) for a in args)]
    )
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert message.format(tmp=tmp_path) in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("csv_name", "text", "message"),
    [
        ("train.csv", "id,grade\na,1\n", "expected 'id_code' and 'diagnosis'"),
        ("train.csv", "id_code,diagnosis\na,9\n", "line 2: diagnosis '9' is not a grade 0-4"),
        ("other.csv", "id_code,diagnosis\n", "train.csv does not exist"),
    ],
)
def test_a_bad_csv_is_a_click_error(tmp_path: Path, csv_name: str, text: str, message: str) -> None:
    (tmp_path / "data" / "train_images").mkdir(parents=True)
    (tmp_path / "data" / csv_name).write_text(text)
    result = CliRunner().invoke(
        cli, ["train", "--data", "aptos", str(tmp_path / "data"), "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert result.output.startswith("Error: ") and message in result.output


def test_an_unfitting_weights_file_is_a_click_error(tmp_path: Path) -> None:
    _folder(tmp_path / "data")
    (tmp_path / "imagenet_no_top.h5").write_bytes(b"not an HDF5 file")
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--data",
            "folder",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "out"),
            "--arch",
            "vgg16",
            "--weights",
            str(tmp_path / "imagenet_no_top.h5"),
        ],
    )
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert "does not hold weights for vgg16 without its top" in result.output
    assert not (tmp_path / "out" / "model.keras").exists()


def test_the_cli_offers_every_architecture_the_trainer_builds() -> None:
    from worker.ml.networks import ARCHITECTURES as TRAINER_ARCHITECTURES

    assert ARCHITECTURES == TRAINER_ARCHITECTURES
