"""Training: a tiny real run writes a loadable model whose manifest matches it."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from common.manifest import GRADE_NAMES, file_sha256, load_verified_manifest
from common.preprocessing import FundusPreprocessing
from common.synth import encode_image, generate_fundus, write_dataset
from worker.training import (
    MODEL_NAME,
    TrainConfig,
    class_weights,
    stratified_split,
    train,
)

METRIC_KEYS = {
    "held_out_images",
    "accuracy",
    "quadratic_weighted_kappa",
    "referable_sensitivity",
    "referable_specificity",
    "referable_auc",
    "confusion_matrix",
    "epochs_trained",
    "train_seconds",
    "best_epoch",
}


def _tiny(out_dir: Path, **overrides: object) -> TrainConfig:
    settings: dict = dict(
        out_dir=out_dir,
        name="tiny",
        version="0.0.1",
        per_grade=6,
        synth_size=128,
        input_size=48,
        epochs=2,
        batch_size=8,
        val_fraction=0.34,
        seed=5,
    )
    return TrainConfig(**{**settings, **overrides})


def _predict(model_path: Path, input_size: int) -> np.ndarray:
    model = keras.saving.load_model(model_path, compile=False)
    images = [encode_image(generate_fundus(grade, 99, 128)) for grade in range(5)]
    preprocessor = FundusPreprocessing(input_size, "rescale")
    pixels = np.stack([preprocessor.prepare(data, max_pixels=10**7) for data in images])
    return np.asarray(model.predict(preprocessor.normalise(pixels), verbose=0))


def test_smoke_train_on_synthetic_images(tmp_path: Path) -> None:
    lines: list[str] = []
    manifest = train(_tiny(tmp_path / "model"), progress=lines.append)

    model_path = tmp_path / "model" / MODEL_NAME
    assert model_path.is_file()
    assert manifest.sha256 == file_sha256(model_path)
    assert load_verified_manifest(model_path) == manifest
    written = json.loads((tmp_path / "model" / "manifest.json").read_text())
    assert written["name"] == "tiny" and written["version"] == "0.0.1"
    assert written["input_size"] == 48 and written["preprocessing"] == "rescale"
    assert written["referable_threshold"] == 0.5
    assert written["class_names"] == list(GRADE_NAMES)
    assert "synthetic" in written["training_data"] and "seed 5" in written["training_data"]
    assert METRIC_KEYS <= set(written["metrics"])
    metrics = written["metrics"]
    assert metrics["held_out_images"] == 10  # two of each grade's six
    assert np.asarray(metrics["confusion_matrix"]).sum() == 10
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert -1.0 <= metrics["quadratic_weighted_kappa"] <= 1.0
    assert 0.0 <= metrics["referable_auc"] <= 1.0
    assert any(line.startswith("epoch   1/2") for line in lines)

    probabilities = _predict(model_path, 48)
    assert probabilities.shape == (5, 5)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_train_on_a_folder_is_reproducible(tmp_path: Path) -> None:
    write_dataset(tmp_path / "data", 4, size=96, seed=1, fmt="png")
    (tmp_path / "data" / "0" / "broken.jpg").write_bytes(b"not an image")
    config = _tiny(tmp_path / "a", data_dir=tmp_path / "data", epochs=1, val_fraction=0.25)
    first = train(config, progress=lambda _: None)
    second = train(_tiny(tmp_path / "b", data_dir=tmp_path / "data", epochs=1, val_fraction=0.25))

    assert "folder data: 20 images" in first.training_data
    assert "1 undecodable skipped" in first.training_data
    assert first.metrics["held_out_images"] == 5
    assert first.metrics["confusion_matrix"] == second.metrics["confusion_matrix"]
    np.testing.assert_allclose(
        _predict(tmp_path / "a" / MODEL_NAME, 48),
        _predict(tmp_path / "b" / MODEL_NAME, 48),
        atol=1e-5,
    )


def test_stratified_split_holds_out_each_grade_in_proportion() -> None:
    grades = np.repeat(np.arange(5), [10, 10, 20, 5, 2])
    train_idx, val_idx = stratified_split(grades, 0.2, seed=3)
    assert np.bincount(grades[val_idx], minlength=5).tolist() == [2, 2, 4, 1, 1]
    assert sorted(np.concatenate([train_idx, val_idx]).tolist()) == list(range(grades.size))
    again, _ = stratified_split(grades, 0.2, seed=3)
    other, _ = stratified_split(grades, 0.2, seed=4)
    assert again.tolist() == train_idx.tolist()
    assert other.tolist() != train_idx.tolist()


def test_class_weights_balance_the_grades() -> None:
    grades = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    weights = class_weights(grades)
    # n / (k * count): 8 / (3 * 4), 8 / (3 * 2), 8 / (3 * 2); absent grades weigh nothing
    assert weights.tolist() == pytest.approx([2 / 3, 4 / 3, 4 / 3, 0.0, 0.0])
    assert (weights[grades] * 1).sum() == pytest.approx(grades.size)


def test_config_rejects_an_empty_validation_split(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        TrainConfig(out_dir=tmp_path, val_fraction=0.0)
