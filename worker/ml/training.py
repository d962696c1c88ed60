"""Train a grading model (our small CNN or a standard backbone) and write it with its manifest.

The networks come from :mod:`worker.ml.networks` and the held-out metrics from
:mod:`lab.report`, the same report ``retinaq evaluate`` writes. Every image goes
through :class:`common.imaging.preprocessing.FundusPreprocessing`, exactly as the worker will feed
it, so what the held-out metrics measure is what serving will see. Images are prepared once at
the model's input size (:func:`lab.datasets.prepare_images`); each batch is then
augmented on those uint8 pixels and normalised.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np

from common.imaging.preprocessing import FundusPreprocessing
from common.modelling.manifest import HEADS, ModelManifest
from lab.datasets import (
    IN_MEMORY_LIMIT,
    LabelledImages,
    augment,
    class_weights,
    prepare_images,
    stratified_split,
)
from lab.report import evaluation_report, manifest_metrics
from worker.ml.networks import (
    ARCHITECTURES,
    BACKBONES,
    build_backbone,
    build_model,
    ordinal_thresholds,
    save_with_manifest,
)

CHECKPOINT_DIR = "checkpoints"
PIXEL_CACHE = Path("cache") / "pixels.npy"
MAX_IMAGE_PIXELS = 120_000_000
BALANCES = ("weights", "sampling")
# Our CNN learns from scratch; a pretrained backbone is fine-tuned, gently.
SMALL_LEARNING_RATE = 2e-3
BACKBONE_LEARNING_RATE = 1e-4
# Bootstrap resamples for the validation split's intervals in the manifest: enough for a
# stable 95 % interval, few enough to cost well under a second.
VALIDATION_RESAMPLES = 500

Progress = Callable[[str], None]


class TrainingError(ValueError):
    """A run that cannot go ahead as configured; the message says why."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run besides the images; equal configs, equal models."""

    out_dir: Path
    name: str = "retinaq-small"
    version: str = "1.0.0"
    arch: str = "small"
    head: str = "softmax"
    weights: Path | None = None  # a backbone's weights without top; None starts from random
    ben_graham: bool = False
    balance: str = "weights"  # class-weighted loss, or grade-balanced sampling of batches
    input_size: int = 128  # the small CNN's; a backbone takes its standard size
    epochs: int = 20
    batch_size: int = 32
    learning_rate: float | None = None  # None: SMALL_ or BACKBONE_LEARNING_RATE
    val_fraction: float = 0.2
    patience: int = 6
    referable_threshold: float = 0.5
    seed: int = 0
    workers: int | None = None  # decoding and augmenting threads; None lets Python choose
    in_memory_limit: int = IN_MEMORY_LIMIT  # bytes of prepared pixels held in RAM

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {ARCHITECTURES}, not {self.arch!r}")
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, not {self.head!r}")
        if self.balance not in BALANCES:
            raise ValueError(f"balance must be one of {BALANCES}, not {self.balance!r}")
        if self.arch == "small" and self.weights is not None:
            raise ValueError("weights load into a backbone; the small CNN starts from random")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError("val_fraction must lie strictly between 0 and 1")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be positive")

    @property
    def preprocessor(self) -> FundusPreprocessing:
        """The preprocessing the model is trained with and its manifest will name."""
        if self.arch == "small":
            return FundusPreprocessing(self.input_size, "rescale", self.ben_graham)
        _, size, mode = BACKBONES[self.arch]
        return FundusPreprocessing(size, mode, self.ben_graham)

    @property
    def optimiser_rate(self) -> float:
        """The learning rate asked for, or the default for the architecture."""
        if self.learning_rate is not None:
            return self.learning_rate
        return SMALL_LEARNING_RATE if self.arch == "small" else BACKBONE_LEARNING_RATE


def build_network(config: TrainConfig) -> keras.Model:
    """The model a config asks for, weights loaded, not yet compiled."""
    if config.arch == "small":
        return build_model(config.input_size, config.seed, config.head)
    model, _, _ = build_backbone(config.arch, config.seed, head=config.head, weights=config.weights)
    return model


# --- data ----------------------------------------------------------------------------------


class AugmentedBatches(keras.utils.PyDataset):
    """Training batches: shuffled (class-weighted) or grade-balanced, augmented, normalised.

    Every batch is keyed by (seed, epoch, index), so it is the same however often and in
    whatever order Keras's worker threads ask for it.
    """

    def __init__(
        self,
        pixels: np.ndarray,
        rows: np.ndarray,
        grades: np.ndarray,
        config: TrainConfig,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.pixels, self.rows, self.grades = pixels, rows, grades  # rows index pixels
        self.batch_size = config.batch_size
        self.preprocessor = config.preprocessor
        self.balanced = config.balance == "sampling"
        self.sample_weights = class_weights(grades)[grades].astype(np.float32)
        self.members = [np.flatnonzero(grades == grade) for grade in np.unique(grades)]
        self.seed, self.epoch = config.seed, 0
        self.order = np.random.default_rng([self.seed, self.epoch]).permutation(grades.size)

    def __len__(self) -> int:
        return math.ceil(self.grades.size / self.batch_size)

    def _balanced_picks(self, rng: np.random.Generator) -> np.ndarray:
        """A full batch whose grades are drawn uniformly, each image drawn within its grade."""
        which = rng.integers(len(self.members), size=self.batch_size)
        offsets = rng.random(self.batch_size)
        picks = np.empty(self.batch_size, dtype=np.int64)
        for k, members in enumerate(self.members):
            chosen = which == k
            picks[chosen] = members[(offsets[chosen] * members.size).astype(np.int64)]
        return picks

    def __getitem__(self, index: int) -> tuple[np.ndarray, ...]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if self.balanced:
            picks = self._balanced_picks(rng)
        else:
            picks = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        augmented = augment(
            self.pixels[self.rows[picks]], rng, ben_graham=self.preprocessor.ben_graham
        )
        x = self.preprocessor.normalise(augmented)
        if self.balanced:
            return x, self.grades[picks]
        return x, self.grades[picks], self.sample_weights[picks]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = np.random.default_rng([self.seed, self.epoch]).permutation(self.grades.size)


class HeldOutBatches(keras.utils.PyDataset):
    """Held-out images in order, normalised as serving does, never augmented."""

    def __init__(
        self,
        pixels: np.ndarray,
        rows: np.ndarray,
        grades: np.ndarray,
        preprocessor: FundusPreprocessing,
        batch_size: int,
    ) -> None:
        super().__init__()
        self.pixels, self.rows, self.grades = pixels, rows, grades
        self.preprocessor, self.batch_size = preprocessor, batch_size

    def __len__(self) -> int:
        return math.ceil(self.rows.size / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        window = slice(index * self.batch_size, (index + 1) * self.batch_size)
        return self.preprocessor.normalise(self.pixels[self.rows[window]]), self.grades[window]


# --- training ------------------------------------------------------------------------------


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


def _checkpoints(config: TrainConfig) -> list[keras.callbacks.Callback]:
    """The best epoch so far and the last one, saved as each ends, so an interrupted run
    keeps its best model: ``out_dir/checkpoints/best.keras`` and ``last.keras``."""
    folder = config.out_dir / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return [
        keras.callbacks.ModelCheckpoint(
            folder / "best.keras", monitor="val_loss", save_best_only=True
        ),
        keras.callbacks.ModelCheckpoint(folder / "last.keras"),
    ]


def train(config: TrainConfig, images: LabelledImages, progress: Progress = print) -> ModelManifest:
    """Train on ``images``, evaluate on a held-out split, write ``model.keras`` and manifest.

    Prepared pixels beyond ``config.in_memory_limit`` bytes live in a memory-mapped file
    under ``out_dir/cache/``, removed when the run ends.
    """
    keras.utils.set_random_seed(config.seed)
    if images.missing:
        shown = ", ".join(images.missing[:5]) + (", …" if len(images.missing) > 5 else "")
        progress(f"no file for {len(images.missing)} listed images, skipped: {shown}")
    model = build_network(config)  # a bad weights file fails before any image is decoded
    preprocessor = config.preprocessor
    cache = config.out_dir / PIXEL_CACHE
    try:
        data = prepare_images(
            images,
            preprocessor,
            max_pixels=MAX_IMAGE_PIXELS,
            workers=config.workers,
            cache_path=cache,
            in_memory_limit=config.in_memory_limit,
            progress=progress,
        )
        return _fit_and_save(config, model, data.pixels, data.grades, data.description, progress)
    finally:
        cache.unlink(missing_ok=True)
        if cache.parent.is_dir() and not any(cache.parent.iterdir()):
            cache.parent.rmdir()


def _batch_workers(config: TrainConfig) -> int:
    """Threads augmenting batches ahead of the model: Pillow rotates outside the GIL."""
    return config.workers or min(4, os.cpu_count() or 1)


def _fit_and_save(
    config: TrainConfig,
    model: keras.Model,
    pixels: np.ndarray,
    grades: np.ndarray,
    description: str,
    progress: Progress,
) -> ModelManifest:
    """Split, fit with checkpoints, evaluate the held-out split, save model and manifest."""
    preprocessor = config.preprocessor
    train_idx, val_idx = stratified_split(grades, config.val_fraction, config.seed)
    if val_idx.size == 0 or train_idx.size == 0:
        raise TrainingError("too few images to hold some out for validation")
    progress(f"{train_idx.size} training and {val_idx.size} held-out images")
    batches = AugmentedBatches(
        pixels, train_idx, grades[train_idx], config, workers=_batch_workers(config)
    )
    held_out = HeldOutBatches(pixels, val_idx, grades[val_idx], preprocessor, config.batch_size)

    model.compile(
        optimizer=keras.optimizers.Adam(config.optimiser_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    stopper = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=config.patience, restore_best_weights=True
    )
    slower = keras.callbacks.ReduceLROnPlateau(
        monitor="val_loss", factor=0.5, patience=max(1, config.patience // 2), min_lr=1e-6
    )
    started = time.perf_counter()
    history = model.fit(
        batches,
        validation_data=held_out,
        epochs=config.epochs,
        callbacks=[EpochPrinter(config.epochs, progress), stopper, slower, *_checkpoints(config)],
        verbose=0,
    )
    train_seconds = time.perf_counter() - started

    probabilities = model.predict(held_out, verbose=0)
    report = evaluation_report(
        grades[val_idx],
        probabilities,
        referable_threshold=config.referable_threshold,
        resamples=VALIDATION_RESAMPLES,
        seed=config.seed,
    )
    scores = manifest_metrics(report)
    scores["epochs_trained"] = len(history.history["loss"])
    scores["best_epoch"] = stopper.best_epoch + 1  # whose weights were kept
    scores["train_seconds"] = round(train_seconds, 1)
    thresholds = ordinal_thresholds(model)
    if thresholds is not None:
        scores["ordinal_thresholds"] = [round(t, 4) for t in thresholds]

    start = f"weights {config.weights.name}" if config.weights else "random weights"
    balance = "grade-balanced batches" if config.balance == "sampling" else "class-weighted loss"
    manifest = save_with_manifest(
        model,
        config.out_dir,
        {
            "name": config.name,
            "version": config.version,
            "input_size": preprocessor.input_size,
            "preprocessing": preprocessor.normalisation,
            "ben_graham": preprocessor.ben_graham,
            "architecture": config.arch,
            "head": config.head,
            "referable_threshold": config.referable_threshold,
            "training_data": (
                f"{description}; stratified split seed {config.seed}: "
                f"{train_idx.size} train, {val_idx.size} held out; {balance}; from {start}"
            ),
            "metrics": scores,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    progress(
        f"held out: accuracy {scores['accuracy']}, QWK {scores['quadratic_weighted_kappa']}, "
        f"referable sensitivity {scores['referable_sensitivity']}, "
        f"specificity {scores['referable_specificity']}, AUC {scores['referable_auc']}"
    )
    return manifest
