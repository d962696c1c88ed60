"""Custom Keras layers saved inside our ``.keras`` files; import this module before loading one.

Only ``keras.ops`` here, no TensorFlow: a saved model then loads under any Keras backend.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from common.screening.grades import N_GRADES


@keras.saving.register_keras_serializable(package="retinaq")
class OrdinalThresholds(keras.layers.Layer):
    """One regression score per image to grade probabilities through learned cut-points.

    A cumulative-link (ordinal logistic) model: ``n_grades - 1`` ordered cut-points
    ``t_1 < … < t_{K-1}`` on the score ``s`` give ``P(grade >= k) = sigmoid(s - t_k)``, and
    each grade's probability is the difference of two neighbours. The cut-points are the
    first one plus a cumulative sum of softplus gaps, so they stay strictly ordered whatever
    the optimiser does, and the output is a proper distribution the worker consumes like a
    softmax, while the score keeps the grades' order (which QWK rewards).
    """

    def __init__(self, n_grades: int = N_GRADES, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if n_grades < 2:
            raise ValueError("an ordinal head needs at least two grades")
        self.n_grades = n_grades

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if input_shape[-1] != 1:
            raise ValueError(f"OrdinalThresholds takes one score per image, not {input_shape}")
        # Start at -1.5, -0.5, 0.5, 1.5 (for five grades): centred, one score unit apart.
        first = -(self.n_grades - 2) / 2
        self.first = self.add_weight(
            name="first", shape=(), initializer=keras.initializers.Constant(first)
        )
        self.gaps = self.add_weight(
            name="gaps",
            shape=(self.n_grades - 2,),
            initializer=keras.initializers.Constant(math.log(math.e - 1.0)),  # softplus = 1
        )

    def thresholds(self) -> Any:
        """The ordered cut-points, a tensor of ``n_grades - 1`` values."""
        steps = ops.cumsum(ops.softplus(self.gaps))
        return ops.concatenate([ops.reshape(self.first, (1,)), self.first + steps])

    def call(self, score: Any) -> Any:
        above = ops.sigmoid(score - self.thresholds())  # (batch, K-1): P(grade >= k)
        ones = ops.ones_like(above[:, :1])
        cumulative = ops.concatenate([ones, above, ops.zeros_like(ones)], axis=-1)
        # Rounding can leave a difference a hair below zero where two sigmoids saturate.
        return ops.maximum(cumulative[:, :-1] - cumulative[:, 1:], 0.0)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*input_shape[:-1], self.n_grades)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "n_grades": self.n_grades}
