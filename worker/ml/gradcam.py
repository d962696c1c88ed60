"""Grad-CAM heatmaps: where in the image the model found the evidence for its grade.

Built once per worker process next to the :class:`worker.ml.model.LoadedModel`. Like
inference, the gradient pass is a ``tf.function`` with a fixed input signature that pads
the last micro-batch, so it is traced once and never again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import keras
import numpy as np
import tensorflow as tf

from common.screening.grades import REFERABLE_MIN_GRADE

# Pooling only downsamples the map before it, so the layer feeding it localises better.
_POOLING = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)

# Keeps the log-odds finite for a probability that underflowed to zero, and padding rows.
_TINY = 1e-30

Target = Literal["referable"] | Sequence[int] | np.ndarray


def _is_feature_map(layer: keras.layers.Layer) -> bool:
    """A (batch, h, w, c) output with more than one spatial position (unknown sizes count)."""
    try:
        shape = tuple(layer.output.shape)
    except (AttributeError, ValueError):  # never called, so it has no output
        return False
    return len(shape) == 4 and (shape[1] is None or shape[2] is None or shape[1] * shape[2] > 1)


def find_last_conv_layer(model: keras.Model) -> str:
    """Name of the layer whose feature map Grad-CAM weighs: the last spatial one, pooling aside.

    A backbone nested as one sub-model layer is itself that layer: its output is taken whole.
    """
    for layer in reversed(model.layers):
        if isinstance(layer, (keras.layers.InputLayer, *_POOLING)):
            continue
        if _is_feature_map(layer):
            return layer.name
    raise ValueError(
        f"model {model.name!r} has no layer with a 4-D (batch, h, w, c) feature map larger "
        "than 1x1, so Grad-CAM has nothing to weigh"
    )


def _feature_model(model: keras.Model, layer_name: str) -> keras.Model:
    """A model mapping the input to (that layer's feature map, the predictions)."""
    layer = model.get_layer(layer_name)
    # A nested sub-model's ``output`` belongs to its own graph; its call inside ``model``
    # is one of its inbound nodes, so take the one that connects to ``model``'s input.
    for node in reversed(layer._inbound_nodes):
        try:
            return keras.Model(model.inputs[0], [node.output_tensors[0], model.outputs[0]])
        except ValueError:
            continue
    raise ValueError(f"layer {layer_name!r} is not connected to the input of {model.name!r}")


class GradCam:
    """Grad-CAM for a single-input, fixed-size image classifier with a softmax over grades."""

    def __init__(
        self,
        model: keras.Model,
        batch_size: int,
        *,
        layer_name: str | None = None,
        min_referable_grade: int = REFERABLE_MIN_GRADE,
    ) -> None:
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise ValueError("Grad-CAM needs a model with one input and one output")
        _, height, width, channels = model.inputs[0].shape
        if height is None or height != width or channels != 3:
            raise ValueError(f"model input must be (batch, s, s, 3), not {model.inputs[0].shape}")
        self.n_classes = int(model.outputs[0].shape[-1])
        if not 0 <= min_referable_grade < self.n_classes:
            raise ValueError(f"{self.n_classes} classes have no grade {min_referable_grade}")
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        self.batch_size, self.input_size = batch_size, int(height)
        self.layer_name = layer_name or find_last_conv_layer(model)
        self._referable = np.zeros(self.n_classes, dtype=np.float32)
        self._referable[min_referable_grade:] = 1.0
        self._explain = _explain_function(
            _feature_model(model, self.layer_name), batch_size, self.input_size, self.n_classes
        )

    def heatmaps(self, inputs: np.ndarray, target: Target = "referable") -> np.ndarray:
        """Heatmaps (n, s, s) in [0, 1] for preprocessed inputs (n, s, s, 3).

        ``target`` is "referable" (the summed probability of the referable grades) or one
        class index per image, such as the predicted grade.
        """
        expected = (self.input_size, self.input_size, 3)
        if inputs.ndim != 4 or inputs.shape[1:] != expected:
            raise ValueError(
                f"inputs must be (n, {', '.join(map(str, expected))}), not {inputs.shape}"
            )
        count, batch = len(inputs), self.batch_size
        weights = self._class_weights(count, target)
        if count == 0:
            return np.zeros((0, self.input_size, self.input_size), np.float32)
        missing = -count % batch  # pad to whole batches, so the graph keeps its one shape
        images = np.concatenate(
            [inputs.astype(np.float32), np.zeros((missing, *expected), np.float32)]
        )
        weights = np.concatenate([weights, np.zeros((missing, self.n_classes), np.float32)])
        heat = [
            self._explain(tf.constant(images[i : i + batch]), tf.constant(weights[i : i + batch]))
            for i in range(0, len(images), batch)
        ]
        return np.concatenate([h.numpy() for h in heat])[:count]

    def _class_weights(self, count: int, target: Target) -> np.ndarray:
        """Per-image weights over the classes whose weighted probability is explained."""
        if isinstance(target, str):
            if target != "referable":
                raise ValueError(f"unknown target {target!r}; use 'referable' or class indices")
            return np.tile(self._referable, (count, 1))
        classes = np.asarray(target)
        if classes.shape != (count,) or not np.issubdtype(classes.dtype, np.integer):
            raise ValueError(f"target must be {count} integer class indices, not {classes.shape}")
        if count and not (0 <= classes.min() and classes.max() < self.n_classes):
            raise ValueError(f"class indices must lie in [0, {self.n_classes})")
        return np.eye(self.n_classes, dtype=np.float32)[classes]


def _explain_function(
    features_and_predictions: keras.Model, batch_size: int, size: int, n_classes: int
) -> tf.types.experimental.PolymorphicFunction:
    """The traced-once gradient pass: (images, class weights) to normalised heatmaps."""
    signature = [
        tf.TensorSpec([batch_size, size, size, 3], tf.float32),
        tf.TensorSpec([batch_size, n_classes], tf.float32),
    ]

    @tf.function(input_signature=signature, reduce_retracing=True)
    def explain(batch: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            features, probabilities = features_and_predictions(batch, training=False)
            probabilities = tf.cast(probabilities, tf.float32)
            chosen = tf.reduce_sum(probabilities * weights, axis=1)
            rest = tf.reduce_sum(probabilities * (1.0 - weights), axis=1)
            # The log-odds of the target gives its probability's heatmap (the gradients
            # differ by a positive factor per image, normalised away below) without the
            # gradient vanishing, or underflowing in float16, when the model is sure.
            log_odds = tf.math.log(chosen + _TINY) - tf.math.log(rest + _TINY)
            # images never interact at inference, so one summed score gives each its gradient
            score = tf.reduce_sum(log_odds)
        gradients = tf.cast(tape.gradient(score, features), tf.float32)
        features = tf.cast(features, tf.float32)  # float16 under mixed precision
        channel_weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(features * channel_weights, axis=-1, keepdims=True))
        cam = tf.image.resize(cam, (size, size), method="bilinear")[..., 0]
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        # no positive evidence at all gives zeros rather than 0/0
        return tf.clip_by_value(tf.math.divide_no_nan(cam, peak), 0.0, 1.0)

    return explain
