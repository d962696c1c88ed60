"""The grading networks: our small CNN and the standard Keras backbones, with one shared head.

Building a network is separate from training it: the benchmark builds a backbone with
random weights, the Grad-CAM tests build tiny ones, and the trainer builds whichever a
config asks for. ImageNet weights cannot be downloaded here, so a backbone's weights come
from a local file of the backbone without its top.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np

from common.modelling.manifest import (
    HEADS,
    ModelManifest,
    file_sha256,
    write_manifest,
)
from common.screening.grades import N_GRADES
from worker.ml.layers import OrdinalThresholds  # also registers it for loading

MODEL_NAME = "model.keras"
WEIGHT_SUFFIXES = (".h5", ".hdf5", ".keras")

# Standard backbones at their standard input size with the matching preprocessing mode.
BACKBONES: dict[str, tuple[str, int, str]] = {
    "mobilenetv2": ("MobileNetV2", 224, "tf"),
    "efficientnetb0": ("EfficientNetB0", 224, "raw"),
    "resnet50": ("ResNet50", 224, "caffe"),
    "inceptionv3": ("InceptionV3", 299, "tf"),
    "xception": ("Xception", 299, "tf"),
    "vgg16": ("VGG16", 224, "caffe"),
}
ARCHITECTURES = ("small", *BACKBONES)
IMAGENET_STD = (0.229, 0.224, 0.225)  # RGB, as keras.applications.efficientnet has it


class WeightsError(ValueError):
    """A ``--weights`` file that is missing or does not fit the backbone."""


def grade_head(features: Any, head: str = "softmax", seed: int = 0) -> Any:
    """Pooling, dropout, then a softmax over the grades or an ordinal regression score.

    Both give five grade probabilities (the output is named ``grades``), so the worker and
    every result downstream treat the two alike.
    """
    x = keras.layers.GlobalAveragePooling2D(name="grade_pool")(features)
    x = keras.layers.Dropout(0.3, seed=seed, name="grade_dropout")(x)
    if head == "softmax":
        return keras.layers.Dense(N_GRADES, activation="softmax", name="grades")(x)
    if head != "regression":
        raise ValueError(f"head must be one of {HEADS}, not {head!r}")
    # No bias: the first cut-point already places the score, and two free offsets would
    # only trade places with each other.
    score = keras.layers.Dense(1, use_bias=False, name="score")(x)
    return OrdinalThresholds(N_GRADES, name="grades")(score)


def build_model(input_size: int, seed: int = 0, head: str = "softmax") -> keras.Model:
    """The "small" architecture: five conv/BN/ReLU/pool blocks, then :func:`grade_head`."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(input_size, input_size, 3), name="fundus")
    x = inputs
    for filters in (16, 32, 48, 64, 96):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=0.9)(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
    return keras.Model(inputs, grade_head(x, head, seed), name="retinaq_small")


def _check_weights_file(path: Path) -> None:
    """Refuse a weights file that cannot be one before building a large backbone for it."""
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if not path.name.endswith(WEIGHT_SUFFIXES):
        raise WeightsError(f"weights file {path} must be a .h5, .weights.h5 or .keras file")


def _load_base_weights(base: keras.Model, path: Path) -> None:
    """Load a backbone's weights (without top) from a local file, or raise WeightsError."""
    try:
        with warnings.catch_warnings():
            # Keras warns, and carries on, when it skips layers it found no weights for:
            # a half-loaded backbone is the wrong file, not a warning.
            warnings.simplefilter("error")
            base.load_weights(path)
    except (ValueError, OSError, KeyError, TypeError, UserWarning) as exc:
        raise WeightsError(
            f"{path} does not hold weights for {base.name} without its top "
            f"(include_top=False): {exc}"
        ) from exc


def _match_imagenet_stem(base: keras.Model) -> None:
    """Fold in the stem scaling Keras adds to EfficientNet only for ``weights="imagenet"``.

    With ImageNet weights Keras follows its Normalization layer with a division by
    sqrt(ImageNet std) per channel, the scaling the original weights were trained with
    (keras.applications.efficientnet, tensorflow#49930). Weights loaded from a file get the
    graph without it; scaling the layer's variance by the std gives the same outputs.
    """
    stem = next(layer for layer in base.layers if isinstance(layer, keras.layers.Normalization))
    stem.adapt_variance.assign(stem.adapt_variance * np.asarray(IMAGENET_STD, np.float32))
    stem.finalize_state()


def build_backbone(
    arch: str, seed: int = 0, *, head: str = "softmax", weights: Path | None = None
) -> tuple[keras.Model, int, str]:
    """A Keras application without top plus :func:`grade_head`: (model, size, mode).

    ImageNet weights cannot be downloaded here: ``weights`` is a local file of the backbone
    without its top (Keras's ``*_no_top.h5``, or a ``.weights.h5``); None keeps the random
    initial weights, which still give the realistic compute per image benchmarks need.
    """
    application, size, mode = BACKBONES[arch]
    if weights is not None:
        _check_weights_file(weights)
    keras.utils.set_random_seed(seed)
    base = getattr(keras.applications, application)(
        include_top=False, weights=None, input_shape=(size, size, 3)
    )
    if weights is not None:
        _load_base_weights(base, weights)
        if arch == "efficientnetb0":
            _match_imagenet_stem(base)
    name = f"{arch}-{head}" if weights is not None else f"{arch}-random"
    return keras.Model(base.input, grade_head(base.output, head, seed), name=name), size, mode


def ordinal_thresholds(model: keras.Model) -> list[float] | None:
    """The learned cut-points of a regression head, or None for a softmax head."""
    layer = model.get_layer("grades")
    if not isinstance(layer, OrdinalThresholds):
        return None
    return [float(t) for t in keras.ops.convert_to_numpy(layer.thresholds())]


def save_with_manifest(
    model: keras.Model, out_dir: Path, manifest_fields: dict[str, object]
) -> ModelManifest:
    """Save ``model.keras`` and its manifest (hash filled in) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MODEL_NAME
    model.save(path)
    manifest = ModelManifest(sha256=file_sha256(path), **manifest_fields)  # type: ignore[arg-type]
    write_manifest(path, manifest)
    return manifest
