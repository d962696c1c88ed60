"""Training: tiny real runs, the architectures and heads, weights files, augmentation, sampling."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from common.modelling.manifest import file_sha256, load_verified_manifest
from common.screening.grades import GRADE_NAMES
from lab.datasets import augment, class_weights, stratified_split, synthetic_images
from lab.synthetic import encode_image, generate_fundus
from worker.ml.layers import OrdinalThresholds
from worker.ml.networks import (
    ARCHITECTURES,
    BACKBONES,
    IMAGENET_STD,
    MODEL_NAME,
    WeightsError,
    build_backbone,
    build_model,
)
from worker.ml.training import AugmentedBatches, TrainConfig, train

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
# docs/domain.md's table: each backbone's standard input and preprocess_input mode.
STANDARD_INPUTS = {
    "small": (128, "rescale"),
    "mobilenetv2": (224, "tf"),
    "efficientnetb0": (224, "raw"),
    "resnet50": (224, "caffe"),
    "inceptionv3": (299, "tf"),
    "xception": (299, "tf"),
    "vgg16": (224, "caffe"),
}


def _tiny(out_dir: Path, **overrides: object) -> TrainConfig:
    settings: dict = dict(
        out_dir=out_dir,
        name="tiny",
        version="0.0.1",
        input_size=48,
        epochs=2,
        batch_size=8,
        val_fraction=0.34,
        seed=5,
    )
    return TrainConfig(**{**settings, **overrides})


def _predict(model_path: Path) -> np.ndarray:
    """Grade five new photographs exactly as the worker would: the manifest's preprocessing."""
    preprocessor = load_verified_manifest(model_path).preprocessor
    model = keras.saving.load_model(model_path, compile=False)
    images = [encode_image(generate_fundus(grade, 99, 128)) for grade in range(5)]
    pixels = np.stack([preprocessor.prepare(data, max_pixels=10**7) for data in images])
    return np.asarray(model.predict(preprocessor.normalise(pixels), verbose=0))


def test_smoke_train_on_synthetic_images_is_reproducible(tmp_path: Path) -> None:
    lines: list[str] = []
    out = tmp_path / "model"
    images = synthetic_images(6, size=128, seed=5)
    manifest = train(_tiny(out), images, progress=lines.append)

    model_path = out / MODEL_NAME
    assert model_path.is_file()
    assert manifest.sha256 == file_sha256(model_path)
    assert load_verified_manifest(model_path) == manifest
    written = json.loads((out / "manifest.json").read_text())
    assert written["name"] == "tiny" and written["version"] == "0.0.1"
    assert written["input_size"] == 48 and written["preprocessing"] == "rescale"
    assert written["architecture"] == "small" and written["head"] == "softmax"
    assert written["ben_graham"] is False
    assert written["referable_threshold"] == 0.5
    assert written["class_names"] == list(GRADE_NAMES)
    assert "synthetic" in written["training_data"] and "seed 5" in written["training_data"]
    assert "class-weighted loss" in written["training_data"]
    assert METRIC_KEYS <= set(written["metrics"])
    metrics = written["metrics"]
    assert metrics["held_out_images"] == 10  # two of each grade's six
    assert np.asarray(metrics["confusion_matrix"]).sum() == 10
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert -1.0 <= metrics["quadratic_weighted_kappa"] <= 1.0
    assert 0.0 <= metrics["referable_auc"] <= 1.0
    # the same report `retinaq evaluate` writes, so each estimate has its 95 % interval
    low, high = metrics["intervals"]["quadratic_weighted_kappa"]
    assert low <= metrics["quadratic_weighted_kappa"] <= high
    assert any(line.startswith("epoch   1/2") for line in lines)
    assert any(line.startswith("prepared 30 images at 48 px") for line in lines)

    probabilities = _predict(model_path)
    assert probabilities.shape == (5, 5)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    # the best epoch's checkpoint is the model that was kept
    best = keras.saving.load_model(out / "checkpoints" / "best.keras", compile=False)
    kept = keras.saving.load_model(model_path, compile=False)
    for ours, theirs in zip(best.get_weights(), kept.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert (out / "checkpoints" / "last.keras").is_file()

    # the same run again, its pixels through a memory-mapped file: the same model
    again = train(_tiny(tmp_path / "again", in_memory_limit=0), images, progress=lambda _: None)
    assert again.metrics["confusion_matrix"] == manifest.metrics["confusion_matrix"]
    np.testing.assert_allclose(_predict(tmp_path / "again" / MODEL_NAME), probabilities, atol=1e-5)
    assert not (tmp_path / "again" / "cache").exists()  # the mapped file is removed


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


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"arch": "alexnet"}, "arch must be one of"),
        ({"head": "ordinal"}, "head must be one of"),
        ({"balance": "oversample"}, "balance must be one of"),
        ({"weights": Path("w.h5")}, "the small CNN starts from random"),
    ],
)
def test_config_rejects_what_cannot_train(
    tmp_path: Path, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(out_dir=tmp_path, **overrides)  # type: ignore[arg-type]


def _fundus_batch(count: int, size: int) -> np.ndarray:
    """A bright disc on black, one image per count, each a little different."""
    yy, xx = np.mgrid[0:size, 0:size]
    disc = (yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2 < (0.45 * size) ** 2
    rng = np.random.default_rng(0)
    texture = rng.integers(60, 200, (count, size, size, 3))
    return np.where(disc[None, ..., None], texture, 0).astype(np.uint8)


@pytest.mark.parametrize(("ben_graham", "background"), [(False, 0.0), (True, 128.0)])
def test_augment_keeps_shape_and_frame_and_is_deterministic(
    ben_graham: bool, background: float
) -> None:
    pixels = _fundus_batch(6, 40)
    if ben_graham:
        pixels[pixels == 0] = 128  # Graham's output is grey outside the field of view

    out = augment(pixels, np.random.default_rng([1, 2, 3]), ben_graham=ben_graham)
    again = augment(pixels, np.random.default_rng([1, 2, 3]), ben_graham=ben_graham)
    other = augment(pixels, np.random.default_rng([1, 2, 4]), ben_graham=ben_graham)

    assert out.shape == pixels.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 255.0
    np.testing.assert_array_equal(out, again)
    assert not np.array_equal(out, other)
    assert not np.allclose(out, pixels)
    # the frame outside the disc stays what serving shows: black, or Graham's grey
    assert np.all(out[:, 0, 0] == background) and np.all(out[:, -1, -1] == background)
    assert pixels.dtype == np.uint8  # the prepared images are not touched


def test_batches_are_the_same_for_a_seed_epoch_and_index(tmp_path: Path) -> None:
    pixels = _fundus_batch(20, 32)
    grades = np.repeat(np.arange(5), 4)
    config = _tiny(tmp_path, input_size=32, batch_size=8)
    rows = np.arange(3, 20)  # a training split of the prepared pixels
    batches = AugmentedBatches(pixels, rows, grades[rows], config)

    x, y, weights = batches[1]
    assert len(batches) == 3
    assert x.shape == (8, 32, 32, 3) and x.dtype == np.float32 and 0.0 <= x.min() <= x.max() <= 1
    assert weights.tolist() == pytest.approx(class_weights(grades[rows])[y].tolist())
    np.testing.assert_array_equal(batches[1][0], x)
    np.testing.assert_array_equal(AugmentedBatches(pixels, rows, grades[rows], config)[1][0], x)
    batches.on_epoch_end()
    assert not np.array_equal(batches[1][0], x)
    assert sum(len(batches[i][1]) for i in range(len(batches))) == rows.size


def test_balanced_sampling_draws_every_grade_equally_often(tmp_path: Path) -> None:
    grades = np.repeat(np.arange(5), [120, 12, 40, 6, 2])
    pixels = np.zeros((grades.size, 8, 8, 3), dtype=np.uint8)
    rows = np.arange(grades.size)
    config = _tiny(tmp_path, input_size=8, batch_size=40, balance="sampling")
    batches = AugmentedBatches(pixels, rows, grades, config)

    drawn = np.concatenate([batches[i][1] for i in range(len(batches))])
    for _ in range(24):
        batches.on_epoch_end()
        drawn = np.concatenate([drawn, *(batches[i][1] for i in range(len(batches)))])

    assert len(batches[0]) == 2  # no sample weights: the sampling does the balancing
    share = np.bincount(drawn, minlength=5) / drawn.size
    assert drawn.size == 25 * 5 * 40
    assert share == pytest.approx([0.2] * 5, abs=0.03)  # not 0.67 / 0.07 / 0.22 / ...


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_builds_at_its_standard_input(tmp_path: Path, arch: str) -> None:
    size, mode = STANDARD_INPUTS[arch]
    config = TrainConfig(out_dir=tmp_path, arch=arch)
    assert (config.preprocessor.input_size, config.preprocessor.normalisation) == (size, mode)
    if arch == "small":
        model = build_model(size)
    else:
        model, built_size, built_mode = build_backbone(arch)
        assert (built_size, built_mode) == (size, mode)
    assert model.input_shape == (None, size, size, 3)
    assert model.output_shape == (None, 5)
    assert model.get_layer("grades").activation.__name__ == "softmax"


def test_a_regression_head_outputs_grade_probabilities_from_ordered_thresholds() -> None:
    model = build_model(32, head="regression")
    layer = model.get_layer("grades")
    assert isinstance(layer, OrdinalThresholds)
    assert model.output_shape == (None, 5)
    # push the learnable gaps far negative: softplus keeps the cut-points strictly ordered
    layer.set_weights([np.float32(0.3), np.array([-8.0, 0.0, 2.0], np.float32)])
    thresholds = keras.ops.convert_to_numpy(layer.thresholds())
    assert np.all(np.diff(thresholds) > 0)
    assert thresholds[0] == pytest.approx(0.3)

    scores = np.array([[-6.0], [0.3], [1.0], [9.0]], dtype=np.float32)
    probabilities = keras.ops.convert_to_numpy(layer(scores))
    above = 1 / (1 + np.exp(-(scores - thresholds)))  # P(grade >= k), k = 1..4
    expected = -np.diff(np.concatenate([np.ones((4, 1)), above, np.zeros((4, 1))], 1), axis=1)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert probabilities.argmax(axis=1).tolist()[::3] == [0, 4]
    assert OrdinalThresholds.from_config(layer.get_config()).n_grades == 5

    backbone, _, _ = build_backbone("mobilenetv2", head="regression")
    assert backbone.output_shape == (None, 5)
    assert isinstance(backbone.get_layer("grades"), OrdinalThresholds)


def test_backbone_weights_load_from_a_local_file(tmp_path: Path) -> None:
    keras.utils.set_random_seed(1)
    source = keras.applications.EfficientNetB0(
        include_top=False, weights=None, input_shape=(224, 224, 3)
    )
    stem = next(layer for layer in source.layers if isinstance(layer, keras.layers.Normalization))
    stem.adapt_mean.assign(np.array([0.485, 0.456, 0.406], np.float32))  # ImageNet's, as
    stem.adapt_variance.assign(np.array([0.052, 0.050, 0.051], np.float32))  # Keras ships
    path = tmp_path / "efficientnetb0_notop.weights.h5"
    source.save_weights(path)

    model, size, mode = build_backbone("efficientnetb0", seed=2, weights=path)

    assert (size, mode) == (224, "raw")
    # built with seed 2, so equal weights can only have come from the file's seed-1 ones;
    # layer names differ between the two builds (normalization_1), their order does not
    for saved_layer, layer in zip(source.layers, model.layers, strict=False):
        assert type(saved_layer) is type(layer)
        if saved_layer is not stem:
            for saved, loaded in zip(saved_layer.get_weights(), layer.get_weights(), strict=True):
                np.testing.assert_array_equal(saved, loaded)
    # the stem scaling Keras adds only for weights="imagenet" is folded into the variance
    mean, variance, _ = model.layers[source.layers.index(stem)].get_weights()
    np.testing.assert_array_equal(mean, np.float32([0.485, 0.456, 0.406]))
    np.testing.assert_allclose(variance, np.array([0.052, 0.050, 0.051]) * IMAGENET_STD, 1e-6)


def test_a_missing_or_unfitting_weights_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        build_backbone("vgg16", weights=tmp_path / "absent.h5")
    (tmp_path / "weights.bin").write_bytes(b"\0" * 64)
    with pytest.raises(WeightsError, match=r"must be a \.h5, \.weights\.h5 or \.keras file"):
        build_backbone("vgg16", weights=tmp_path / "weights.bin")
    (tmp_path / "garbage.h5").write_bytes(b"not hdf5")
    with pytest.raises(WeightsError, match="does not hold weights for vgg16"):
        build_backbone("vgg16", weights=tmp_path / "garbage.h5")
    other = tmp_path / "small.weights.h5"
    build_model(32).save_weights(other)
    with pytest.raises(WeightsError, match="without its top"):
        build_backbone("vgg16", weights=other)


def test_backbones_cover_the_architectures() -> None:
    assert set(ARCHITECTURES) == {"small", *BACKBONES} == set(STANDARD_INPUTS)
