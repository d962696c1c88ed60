"""Train the small grading CNN and write ``model.keras`` with its manifest.

The only training module that imports TensorFlow. Every image goes through
:class:`common.preprocessing.FundusPreprocessing`, exactly as the
worker will feed it, so what the held-out metrics measure is what serving will see.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from common import metrics  # noqa: E402
from common.imaging import ImageDecodeError  # noqa: E402
from common.manifest import (  # noqa: E402
    GRADE_NAMES,
    REFERABLE_MIN_GRADE,
    ModelManifest,
    file_sha256,
    write_manifest,
)
from common.preprocessing import FundusPreprocessing, normalise  # noqa: E402
from common.synth import encode_image, iter_dataset  # noqa: E402

MODEL_NAME = "model.keras"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})
MAX_IMAGE_PIXELS = 120_000_000
N_GRADES = len(GRADE_NAMES)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; equal configs give equal models."""

    out_dir: Path
    name: str = "retinaq-small"
    version: str = "1.0.0"
    data_dir: Path | None = None  # a <grade>/<image> folder; None trains on synthetic images
    per_grade: int = 400  # synthetic images generated per grade
    synth_size: int = 512  # side of each generated image before preparation
    input_size: int = 128
    preprocessing: str = "rescale"
    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 2e-3
    val_fraction: float = 0.2
    patience: int = 6
    referable_threshold: float = 0.5
    seed: int = 0

    @property
    def preprocessor(self) -> FundusPreprocessing:
        """The preprocessing the model is trained with and its manifest will name."""
        return FundusPreprocessing(self.input_size, self.preprocessing)

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError("val_fraction must lie strictly between 0 and 1")
        if self.epochs < 1 or self.batch_size < 1 or self.per_grade < 1:
            raise ValueError("epochs, batch_size and per_grade must be positive")


@dataclass(frozen=True)
class Dataset:
    """Prepared uint8 images, their grades, and a sentence saying where they came from."""

    pixels: np.ndarray  # N x S x S x 3, uint8, as FundusPreprocessing.prepare returns them
    grades: np.ndarray  # N, int64
    description: str


def build_model(input_size: int, seed: int = 0) -> keras.Model:
    """The "small" architecture: five conv/BN/ReLU/pool blocks, GAP, dropout, softmax."""
    inputs = keras.Input(shape=(input_size, input_size, 3), name="fundus")
    x = inputs
    for filters in (16, 32, 48, 64, 96):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=0.9)(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.3, seed=seed)(x)
    outputs = keras.layers.Dense(N_GRADES, activation="softmax", name="grade")(x)
    return keras.Model(inputs, outputs, name="retinaq_small")


# Standard backbones at their standard input size with the matching preprocessing mode.
BACKBONES: dict[str, tuple[str, int, str]] = {
    "mobilenetv2": ("MobileNetV2", 224, "tf"),
    "efficientnetb0": ("EfficientNetB0", 224, "raw"),
    "resnet50": ("ResNet50", 224, "caffe"),
    "inceptionv3": ("InceptionV3", 299, "tf"),
    "xception": ("Xception", 299, "tf"),
    "vgg16": ("VGG16", 224, "caffe"),
}


def build_backbone(arch: str, seed: int = 0) -> tuple[keras.Model, int, str]:
    """A Keras application with random weights and a five-grade head: (model, size, mode).

    ImageNet weights cannot be downloaded here; random weights give the realistic compute
    per image that benchmarks need.
    """
    application, size, mode = BACKBONES[arch]
    keras.utils.set_random_seed(seed)
    base = getattr(keras.applications, application)(
        include_top=False, weights=None, input_shape=(size, size, 3)
    )
    features = keras.layers.GlobalAveragePooling2D()(base.output)
    features = keras.layers.Dropout(0.3)(features)
    outputs = keras.layers.Dense(N_GRADES, activation="softmax", name="grades")(features)
    return keras.Model(base.input, outputs, name=f"{arch}-random"), size, mode


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


def synthetic_dataset(config: TrainConfig, progress: Progress) -> Dataset:
    """Generate, JPEG-encode and prepare ``per_grade`` synthetic images of each grade."""
    pixels, grades = [], []
    started = time.perf_counter()
    for _, grade, image in iter_dataset(config.per_grade, size=config.synth_size, seed=config.seed):
        data = encode_image(image, "jpg")
        pixels.append(config.preprocessor.prepare(data, max_pixels=MAX_IMAGE_PIXELS))
        grades.append(grade)
    progress(f"generated {len(grades)} synthetic images in {time.perf_counter() - started:.1f} s")
    description = (
        f"synthetic: common.synth seed {config.seed}, {config.per_grade} JPEG images per grade "
        f"at {config.synth_size} px ({len(grades)} in all)"
    )
    return Dataset(np.stack(pixels), np.asarray(grades, dtype=np.int64), description)


def _folder_images(data_dir: Path) -> Iterator[tuple[Path, int]]:
    """``(path, grade)`` for each image under ``<data_dir>/<grade>/``, in a stable order."""
    for grade in range(N_GRADES):
        folder = data_dir / str(grade)
        if folder.is_dir():
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    yield path, grade


def folder_dataset(config: TrainConfig, progress: Progress) -> Dataset:
    """Prepare every image under ``<data_dir>/<grade>/``, skipping undecodable ones."""
    assert config.data_dir is not None
    pixels, grades, skipped = [], [], 0
    for path, grade in _folder_images(config.data_dir):
        try:
            prepared = config.preprocessor.prepare(path.read_bytes(), max_pixels=MAX_IMAGE_PIXELS)
        except ImageDecodeError as exc:
            progress(f"skipping {path}: {exc}")
            skipped += 1
            continue
        pixels.append(prepared)
        grades.append(grade)
    if not grades:
        raise ValueError(f"no images found under {config.data_dir}/<grade>/")
    counts = np.bincount(grades, minlength=N_GRADES).tolist()
    description = f"folder {config.data_dir.name}: {len(grades)} images, per grade {counts}" + (
        f", {skipped} undecodable skipped" if skipped else ""
    )
    return Dataset(np.stack(pixels), np.asarray(grades, dtype=np.int64), description)


def stratified_split(
    grades: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train and held-out indices holding ``val_fraction`` of every grade (at least one)."""
    rng = np.random.default_rng(seed)
    train, held_out = [], []
    for grade in np.unique(grades):
        members = rng.permutation(np.flatnonzero(grades == grade))
        n_val = max(1, round(members.size * val_fraction)) if members.size > 1 else 0
        held_out.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held_out))


def class_weights(grades: np.ndarray) -> np.ndarray:
    """Balanced weights ``n / (k * count_c)`` so a rare grade counts as much as a common one."""
    counts = np.bincount(grades, minlength=N_GRADES).astype(np.float64)
    present = counts > 0
    weights = np.zeros(N_GRADES)
    weights[present] = grades.size / (present.sum() * counts[present])
    return weights


class AugmentedBatches(keras.utils.PyDataset):
    """Shuffled, lightly augmented, normalised training batches with class-weighted samples.

    Augmenting uint8 pixels before :func:`normalise` keeps the model's input distribution
    the one serving produces, whatever the preprocessing mode.
    """

    def __init__(
        self,
        pixels: np.ndarray,
        grades: np.ndarray,
        weights: np.ndarray,
        config: TrainConfig,
    ) -> None:
        super().__init__()
        self.pixels, self.grades = pixels, grades
        self.sample_weights = weights[grades].astype(np.float32)
        self.batch_size = config.batch_size
        self.preprocessing = config.preprocessing
        self.seed, self.epoch = config.seed, 0
        self.order = np.random.default_rng([self.seed, self.epoch]).permutation(grades.size)

    def __len__(self) -> int:
        return math.ceil(self.grades.size / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        batch = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        # keyed by (epoch, batch), so a batch is the same however often Keras asks for it
        rng = np.random.default_rng([self.seed, self.epoch, index])
        x = self.pixels[batch].astype(np.float32)
        flip_lr = rng.random(batch.size) < 0.5
        flip_ud = rng.random(batch.size) < 0.5
        x[flip_lr] = x[flip_lr, :, ::-1]
        x[flip_ud] = x[flip_ud, ::-1]
        x *= rng.uniform(0.85, 1.15, (batch.size, 1, 1, 1)).astype(np.float32)
        np.clip(x, 0.0, 255.0, out=x)
        return normalise(x, self.preprocessing), self.grades[batch], self.sample_weights[batch]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = np.random.default_rng([self.seed, self.epoch]).permutation(self.grades.size)


class EpochPrinter(keras.callbacks.Callback):
    """One line per epoch, since Keras's own progress bar garbles non-terminal output."""

    def __init__(self, epochs: int, progress: Progress) -> None:
        super().__init__()
        self.epochs, self.progress = epochs, progress
        self.started = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        self.progress(
            f"epoch {epoch + 1:>3}/{self.epochs}  "
            f"loss {logs.get('loss', float('nan')):.4f}  "
            f"acc {logs.get('accuracy', float('nan')):.3f}  "
            f"val_loss {logs.get('val_loss', float('nan')):.4f}  "
            f"val_acc {logs.get('val_accuracy', float('nan')):.3f}  "
            f"({time.perf_counter() - self.started:.1f} s)"
        )


def _rounded(value: float) -> float | None:
    """JSON-safe metric: four decimals, and None for an undefined (NaN) value."""
    return None if math.isnan(value) else round(value, 4)


def evaluate(
    probabilities: np.ndarray, grades: np.ndarray, referable_threshold: float
) -> dict[str, Any]:
    """Held-out metrics: accuracy and QWK over grades, referable sensitivity/specificity/AUC."""
    predicted = probabilities.argmax(axis=1)
    referable_score = metrics.referable_probability(probabilities)
    sensitivity, specificity = metrics.referable_sensitivity_specificity(
        grades, referable_score >= referable_threshold
    )
    return {
        "held_out_images": int(grades.size),
        "accuracy": _rounded(metrics.accuracy(grades, predicted)),
        "quadratic_weighted_kappa": _rounded(metrics.quadratic_weighted_kappa(grades, predicted)),
        "referable_sensitivity": _rounded(sensitivity),
        "referable_specificity": _rounded(specificity),
        "referable_auc": _rounded(metrics.roc_auc(grades >= REFERABLE_MIN_GRADE, referable_score)),
        "confusion_matrix": metrics.confusion_matrix(grades, predicted).tolist(),
    }


def train(config: TrainConfig, progress: Progress = print) -> ModelManifest:
    """Train, evaluate on the held-out split, and write ``model.keras`` plus its manifest."""
    keras.utils.set_random_seed(config.seed)
    data = (
        synthetic_dataset(config, progress)
        if config.data_dir is None
        else folder_dataset(config, progress)
    )
    train_idx, val_idx = stratified_split(data.grades, config.val_fraction, config.seed)
    if val_idx.size == 0 or train_idx.size == 0:
        raise ValueError("too few images to hold some out for validation")
    progress(f"{train_idx.size} training and {val_idx.size} held-out images")
    train_grades, val_grades = data.grades[train_idx], data.grades[val_idx]
    batches = AugmentedBatches(
        data.pixels[train_idx], train_grades, class_weights(train_grades), config
    )
    val_x = normalise(data.pixels[val_idx], config.preprocessing)

    model = build_model(config.input_size, config.seed)
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=config.patience, restore_best_weights=True
    )
    slower = keras.callbacks.ReduceLROnPlateau(
        monitor="val_loss", factor=0.5, patience=max(1, config.patience // 2), min_lr=1e-5
    )
    started = time.perf_counter()
    history = model.fit(
        batches,
        validation_data=(val_x, val_grades),
        epochs=config.epochs,
        callbacks=[EpochPrinter(config.epochs, progress), stopper, slower],
        verbose=0,
    )
    train_seconds = time.perf_counter() - started

    probabilities = model.predict(val_x, batch_size=64, verbose=0)
    scores = evaluate(probabilities, val_grades, config.referable_threshold)
    scores["epochs_trained"] = len(history.history["loss"])
    scores["best_epoch"] = stopper.best_epoch + 1  # whose weights were kept
    scores["train_seconds"] = round(train_seconds, 1)

    config.out_dir.mkdir(parents=True, exist_ok=True)
    model_path = config.out_dir / MODEL_NAME
    model.save(model_path)
    manifest = ModelManifest(
        name=config.name,
        version=config.version,
        sha256=file_sha256(model_path),
        input_size=config.input_size,
        preprocessing=config.preprocessing,
        referable_threshold=config.referable_threshold,
        training_data=(
            f"{data.description}; stratified split seed {config.seed}: "
            f"{train_idx.size} train, {val_idx.size} held out"
        ),
        metrics=scores,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    write_manifest(model_path, manifest)
    progress(
        f"held out: accuracy {scores['accuracy']}, QWK {scores['quadratic_weighted_kappa']}, "
        f"referable sensitivity {scores['referable_sensitivity']}, "
        f"specificity {scores['referable_specificity']}, AUC {scores['referable_auc']}"
    )
    return manifest
