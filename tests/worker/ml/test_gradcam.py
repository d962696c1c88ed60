"""Grad-CAM: the right layer, well-formed heatmaps, and heat on the lesion a model learnt."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from lab.synthetic import generate_fundus
from worker.ml.gradcam import GradCam, find_last_conv_layer
from worker.ml.networks import build_backbone, build_model

LESION_SIZE = 32  # side of the lesion-task images
LESION_RADIUS = 4
LESION_SEED = 7
NEGATIVE, POSITIVE = 0, 3  # "No DR" and a referable grade, so the default target applies


def _assert_heatmaps(heat: np.ndarray, count: int, size: int) -> None:
    """Shape (n, s, s), float32, finite, in [0, 1], each peaking at 1 or all zero."""
    assert heat.shape == (count, size, size)
    assert heat.dtype == np.float32
    assert np.isfinite(heat).all()
    assert heat.min() >= 0.0 and heat.max() <= 1.0
    peaks = heat.reshape(count, -1).max(axis=1)
    assert np.all(np.isclose(peaks, 1.0) | (peaks == 0.0))


def _lesion_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noisy images, centred on zero, each with a dark distractor disc; odd ones also a lesion.

    The bright lesion disc is what makes an image positive. The dark disc is in every
    image, so a model that learnt the task must ignore it. Returns (images, grades, masks).
    """
    rng = np.random.default_rng(seed)
    size, radius = LESION_SIZE, LESION_RADIUS
    yy, xx = np.mgrid[:size, :size]
    images = rng.normal(0.5, 0.08, (count, size, size, 3)).astype(np.float32)
    grades = np.where(np.arange(count) % 2 == 1, POSITIVE, NEGATIVE)
    masks = np.zeros((count, size, size), dtype=bool)
    for i in range(count):
        while True:  # the two discs never touch
            (ly, lx), (dy, dx) = rng.integers(radius + 1, size - radius - 1, (2, 2))
            if (ly - dy) ** 2 + (lx - dx) ** 2 > (3 * radius) ** 2:
                break
        images[i][(yy - dy) ** 2 + (xx - dx) ** 2 <= radius**2] -= 0.5
        if grades[i] == POSITIVE:
            masks[i] = (yy - ly) ** 2 + (xx - lx) ** 2 <= radius**2
            images[i][masks[i]] += 0.5
    return np.clip(images, 0.0, 1.0) - 0.5, grades, masks


@pytest.fixture(scope="module")
def lesion_model() -> keras.Model:
    """A tiny CNN (conv/pool blocks, GAP, five-grade softmax) trained to spot the lesion."""
    keras.utils.set_random_seed(LESION_SEED)
    images, grades, _ = _lesion_images(300, LESION_SEED)
    inputs = keras.Input((LESION_SIZE, LESION_SIZE, 3))
    x = inputs
    for filters in (8, 16):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="last_conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    model.fit(images, grades, epochs=5, batch_size=32, verbose=0)
    return model


def test_grad_cam_puts_the_heat_on_the_learnt_lesion(lesion_model: keras.Model) -> None:
    images, grades, masks = _lesion_images(60, LESION_SEED + 1)
    predicted = lesion_model.predict(images, verbose=0).argmax(axis=1)
    assert (predicted == grades).mean() >= 0.95, "the model did not learn the task"

    cam = GradCam(lesion_model, batch_size=16)
    assert cam.layer_name == "last_conv"
    positive = grades == POSITIVE
    heat, masks = cam.heatmaps(images[positive]), masks[positive]
    _assert_heatmaps(heat, int(positive.sum()), LESION_SIZE)

    inside = np.array([h[m].mean() for h, m in zip(heat, masks, strict=True)])
    outside = np.array([h[~m].mean() for h, m in zip(heat, masks, strict=True)])
    assert inside.mean() > 2 * outside.mean()
    assert np.mean(inside > 2 * outside) >= 0.9

    centres = np.array([np.argwhere(m).mean(axis=0) for m in masks])
    peaks = np.array([np.unravel_index(h.argmax(), h.shape) for h in heat])
    near = np.hypot(*(peaks - centres).T) <= LESION_RADIUS + 2
    assert near.mean() >= 0.8

    # Explaining "No DR" instead asks what argues against referral: not the lesion.
    against = cam.heatmaps(images[positive], target=np.full(positive.sum(), NEGATIVE))
    inside_against = np.array([h[m].mean() for h, m in zip(against, masks, strict=True)])
    assert inside_against.mean() < inside.mean() / 2


def test_images_are_explained_independently_of_their_batch(lesion_model: keras.Model) -> None:
    images, _, _ = _lesion_images(7, LESION_SEED + 2)
    cam = GradCam(lesion_model, batch_size=4)
    together = cam.heatmaps(images)
    alone = np.concatenate([cam.heatmaps(images[i : i + 1]) for i in range(len(images))])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert cam.heatmaps(images[:0]).shape == (0, LESION_SIZE, LESION_SIZE)
    assert cam._explain.experimental_get_tracing_count() == 1


def test_a_mixed_precision_copy_gives_the_same_heatmaps(lesion_model: keras.Model) -> None:
    """float16 features and gradients must neither underflow to blank maps nor drift."""
    output_layer = lesion_model.layers[-1].name

    def in_float16(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        config["dtype"] = "float32" if layer.name == output_layer else "mixed_float16"
        return layer.__class__.from_config(config)

    mixed = keras.models.clone_model(lesion_model, clone_function=in_float16)
    mixed.set_weights(lesion_model.get_weights())
    images, grades, _ = _lesion_images(8, LESION_SEED + 4)
    exact = GradCam(lesion_model, batch_size=8).heatmaps(images)
    halved = GradCam(mixed, batch_size=8).heatmaps(images)
    _assert_heatmaps(halved, 8, LESION_SIZE)
    assert halved[grades == POSITIVE].max(axis=(1, 2)) == pytest.approx(1.0)
    assert np.abs(halved - exact).mean() < 0.02


def test_class_targets_accept_one_index_per_image(lesion_model: keras.Model) -> None:
    images, _, _ = _lesion_images(3, LESION_SEED + 3)
    cam = GradCam(lesion_model, batch_size=4)
    _assert_heatmaps(cam.heatmaps(images, target=[0, 3, 4]), 3, LESION_SIZE)


@pytest.mark.parametrize(
    ("inputs", "target"),
    [
        (np.zeros((2, LESION_SIZE, LESION_SIZE)), "referable"),
        (np.zeros((2, 16, 16, 3)), "referable"),
        (np.zeros((2, LESION_SIZE, LESION_SIZE, 3)), "predicted"),
        (np.zeros((2, LESION_SIZE, LESION_SIZE, 3)), [1]),
        (np.zeros((2, LESION_SIZE, LESION_SIZE, 3)), [1, 5]),
        (np.zeros((2, LESION_SIZE, LESION_SIZE, 3)), [-1, 0]),
        (np.zeros((2, LESION_SIZE, LESION_SIZE, 3)), [0.5, 1.0]),
    ],
    ids=[
        "no-channels",
        "wrong-size",
        "unknown-target",
        "too-few-classes",
        "class-too-high",
        "negative-class",
        "float-classes",
    ],
)
def test_bad_inputs_and_targets_raise_value_error(
    lesion_model: keras.Model, inputs: np.ndarray, target: object
) -> None:
    cam = GradCam(lesion_model, batch_size=2)
    with pytest.raises(ValueError):
        cam.heatmaps(inputs, target=target)  # type: ignore[arg-type]


def test_small_cnn_uses_its_last_relu_before_the_final_pool() -> None:
    model = build_model(64)
    name = find_last_conv_layer(model)
    relus = [layer.name for layer in model.layers if isinstance(layer, keras.layers.ReLU)]
    assert name == relus[-1]
    assert tuple(model.get_layer(name).output.shape) == (None, 4, 4, 96)


def test_feature_maps_pooled_to_one_pixel_are_skipped() -> None:
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="wide")(inputs)
    x = keras.layers.MaxPooling2D(4)(x)
    x = keras.layers.Conv2D(4, 2, padding="valid", activation="relu", name="one_pixel")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(x))
    assert find_last_conv_layer(model) == "wide"


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("mobilenetv2", "out_relu"),
        ("resnet50", "conv5_block3_out"),
        ("inceptionv3", "mixed10"),
        ("vgg16", "block5_conv3"),  # not block5_pool
    ],
)
def test_backbones_use_their_last_activation(arch: str, expected: str) -> None:
    model, _, _ = build_backbone(arch)
    assert find_last_conv_layer(model) == expected


def test_models_without_a_spatial_feature_map_are_refused() -> None:
    inputs = keras.Input((16, 16, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(pooled))
    with pytest.raises(ValueError, match="no layer with a 4-D"):
        find_last_conv_layer(model)
    with pytest.raises(ValueError, match="no layer with a 4-D"):
        GradCam(model, batch_size=2)


def test_heatmaps_for_the_small_cnn_at_serving_batch_size() -> None:
    model = build_model(64)
    cam = GradCam(model, batch_size=4)
    images = np.random.default_rng(0).random((6, 64, 64, 3), dtype=np.float32)
    _assert_heatmaps(cam.heatmaps(images), 6, 64)


def test_heatmaps_for_a_keras_applications_backbone() -> None:
    model, size, _ = build_backbone("mobilenetv2")
    cam = GradCam(model, batch_size=2)
    assert cam.layer_name == "out_relu"
    images = np.random.default_rng(0).uniform(-1.0, 1.0, (3, size, size, 3)).astype(np.float32)
    _assert_heatmaps(cam.heatmaps(images), 3, size)


def test_a_backbone_nested_as_one_layer_is_explained_through_its_output() -> None:
    keras.utils.set_random_seed(0)
    backbone = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(96, 96, 3), alpha=0.35
    )
    inputs = keras.Input((96, 96, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(pooled))
    cam = GradCam(model, batch_size=2)
    assert cam.layer_name == backbone.name
    images = np.random.default_rng(1).uniform(-1.0, 1.0, (2, 96, 96, 3)).astype(np.float32)
    _assert_heatmaps(cam.heatmaps(images, target=[2, 4]), 2, 96)


def test_heatmaps_for_the_bundled_model(bundled_model_path: Path) -> None:
    model = keras.saving.load_model(bundled_model_path, compile=False)
    size = int(model.inputs[0].shape[1])
    # "rescale" inputs, as the bundled model's manifest asks; exact preparation is not the point
    images = np.stack(
        [np.asarray(generate_fundus(grade, 3, size), dtype=np.float32) / 255.0 for grade in (0, 4)]
    )
    cam = GradCam(model, batch_size=8)
    assert cam.layer_name == "re_lu_4"
    heat = cam.heatmaps(images)
    _assert_heatmaps(heat, 2, size)
    predicted = model.predict(images, verbose=0).argmax(axis=1)
    _assert_heatmaps(cam.heatmaps(images, target=predicted), 2, size)
