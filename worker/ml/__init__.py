"""The only TensorFlow in the repository: loading and running models, Grad-CAM, training.

The serving worker imports :mod:`worker.ml.model` and :mod:`worker.ml.gradcam`; training,
the network builders and evaluation are for the ``retinaq train``/``evaluate`` commands.
Keras's backend and TensorFlow's log level are set here, once, before any module of this
package imports Keras: a deployment may still choose another backend with ``KERAS_BACKEND``.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
