"""The one serving module that imports TensorFlow: load a Keras model once and run it.

The worker process holds one :class:`LoadedModel`. Inference calls a ``tf.function`` with a
fixed input signature and pads the last micro-batch to the full batch size, so the graph
is traced once at warm-up and never again.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import worker.ml.layers  # noqa: F401  (registers the custom layers our .keras files use)
from common.modelling.manifest import ModelManifest, load_verified_manifest

log = logging.getLogger(__name__)


def configure_devices(expect_gpu: bool = False) -> list[str]:
    """Enable GPU memory growth (so one process per GPU does not grab it all); list devices.

    No GPU is a WARNING when one was expected, by ``expect_gpu`` or by a
    ``CUDA_VISIBLE_DEVICES`` that names devices (``""`` and ``-1`` hide them on purpose):
    a GPU worker silently grading on the CPU is a broken deployment, not a choice.
    """
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if not gpus:
        # CUDA's own variable, read where the devices are, beside TensorFlow reading it.
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if expect_gpu or visible not in (None, "", "-1"):
            log.warning(
                "expected a GPU (RETINAQ_EXPECT_GPU=%s, CUDA_VISIBLE_DEVICES=%s) but TensorFlow "
                "sees none, so grading runs on the CPU; this TensorFlow %s built with CUDA",
                "true" if expect_gpu else "false",
                "unset" if visible is None else repr(visible),
                "is" if tf.test.is_built_with_cuda() else "is NOT",
            )
        else:
            log.info("no GPU visible: grading runs on the CPU")
    return [device.name for device in tf.config.list_physical_devices()]


@dataclass
class LoadedModel:
    """A verified Keras model plus the manifest that says how to feed it."""

    manifest: ModelManifest
    batch_size: int
    _model: keras.Model
    _infer: tf.types.experimental.PolymorphicFunction

    @property
    def keras_model(self) -> keras.Model:
        """The Keras model itself, for Grad-CAM."""
        return self._model

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        """Probabilities (n, 5) for preprocessed inputs (n, s, s, 3), padded to the batch size."""
        count = len(inputs)
        out = []
        for start in range(0, count, self.batch_size):
            chunk = inputs[start : start + self.batch_size]
            real = len(chunk)
            if real < self.batch_size:
                pad = np.zeros((self.batch_size - real, *chunk.shape[1:]), dtype=np.float32)
                chunk = np.concatenate([chunk, pad])
            out.append(self._infer(tf.constant(chunk, dtype=tf.float32)).numpy()[:real])
        return np.concatenate(out) if out else np.zeros((0, len(self.manifest.class_names)))


def load_model(
    model_path: Path, batch_size: int, *, xla: bool = False, mixed_precision: bool = False
) -> LoadedModel:
    """Verify the file against its manifest, load it, and warm it up with one dummy batch.

    ``xla`` compiles the inference graph; ``mixed_precision`` rebuilds the model with
    float16 compute (float32 variables and output), which pays off on tensor-core GPUs.
    """
    started = time.perf_counter()
    manifest = load_verified_manifest(model_path)
    model = keras.saving.load_model(model_path, compile=False)
    if mixed_precision:
        model = _with_mixed_precision(model)
    size = manifest.input_size
    signature = [tf.TensorSpec([batch_size, size, size, 3], tf.float32)]

    @tf.function(input_signature=signature, reduce_retracing=True, jit_compile=xla)
    def infer(batch: tf.Tensor) -> tf.Tensor:
        return tf.cast(model(batch, training=False), tf.float32)

    loaded = LoadedModel(manifest, batch_size, model, infer)
    loaded.predict(np.zeros((1, size, size, 3), dtype=np.float32))
    log.info(
        "model %s %s (sha256 %s) loaded and warmed up in %.1fs (batch %d, xla=%s, mixed=%s)",
        manifest.name,
        manifest.version,
        manifest.sha256[:12],
        time.perf_counter() - started,
        batch_size,
        xla,
        mixed_precision,
    )
    return loaded


def _with_mixed_precision(model: keras.Model) -> keras.Model:
    """A copy computing in float16, the output layer kept in float32 for stable softmax."""
    output_layer = model.layers[-1].name

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        config["dtype"] = "float32" if layer.name == output_layer else "mixed_float16"
        return layer.__class__.from_config(config)

    mixed = keras.models.clone_model(model, clone_function=clone)
    mixed.set_weights(model.get_weights())
    return mixed
