"""Serving the activated model: checked before every task, switched between two tasks.

``retinaq admin models activate NAME`` stores the model in the database
(:mod:`common.modelling.activation`). Before each task this process runs, one primary-key
read asks which model is active; when it is not the one held, the new one is loaded from
this host's registry, verified against the hash that was activated, warmed up, and the
process's runtime is replaced by one holding it, so the task about to run and every one
after it grade with the new model and record it in their results. Nothing changes in the
middle of a task, and a model that cannot be loaded here leaves the old one serving (logged
at ERROR, retried only when the activation changes again).

A worker started with ``RETINAQ_MODEL_PATH`` (a file outside the registry) is pinned to
that file and never switches. Connected from :mod:`worker.celery_app`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from celery.signals import task_prerun
from sqlalchemy.exc import SQLAlchemyError

from common.modelling.activation import (
    Activation,
    active_model,
    pinned_model_file,
    serving_model_file,
)
from common.modelling.manifest import ManifestError, read_manifest

if TYPE_CHECKING:
    from worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)

_switching = threading.Lock()
# The activation this process could not serve (missing or different file on this host): not
# tried again before task after task, only once the activation changes.
_refused: tuple[str, str] | None = None


def wanted_activation(runtime: WorkerRuntime) -> Activation | None:
    """The activation this worker should serve, or None to keep what it holds."""
    if pinned_model_file(runtime.settings) is not None:
        return None
    try:
        with runtime.sessions() as session:
            activation = active_model(session)
    except SQLAlchemyError as error:
        # The task's own database work retries and reports an outage; this check never fails it.
        log.warning("could not read the active model, keeping the one held: %s", error)
        return None
    if activation is None:
        return None
    held = runtime.model.manifest
    if (held.name, held.sha256) == (activation.name, activation.sha256):
        return None
    if _refused == (activation.name, activation.sha256):
        return None
    return activation


def load_activated(runtime: WorkerRuntime, activation: Activation) -> WorkerRuntime | None:
    """A runtime like ``runtime`` holding the activated model, loaded and warmed; None (logged)
    when this host cannot serve it."""
    global _refused
    from worker.ml.model import load_model  # TensorFlow: already loaded by this worker

    settings = runtime.settings
    path = serving_model_file(settings, activation)
    started = time.perf_counter()
    try:
        # The manifest first: a copy that is not the activated file is refused unloaded.
        found = read_manifest(path).sha256
        if found != activation.sha256:
            raise ManifestError(
                f"it was activated with SHA-256 {activation.sha256}, but this host's copy "
                f"({path}) says {found}"
            )
        model = load_model(
            path,
            settings.grading_batch_size,
            xla=settings.xla,
            mixed_precision=settings.mixed_precision,
        )
        if model.manifest.sha256 != activation.sha256:  # rewritten while it was loading
            raise ManifestError(f"{path} changed while it was loading")
    except Exception as error:  # whatever a file does to Keras, the held model keeps serving
        _refused = (activation.name, activation.sha256)
        log.error(
            "model %s was activated but cannot be served here, still serving %s: %s",
            activation.name,
            runtime.model.manifest.name,
            error,
        )
        return None
    _refused = None
    log.info(
        "switched model from %s %s to %s %s (sha256 %s) in %.1fs",
        runtime.model.manifest.name,
        runtime.model.manifest.version,
        model.manifest.name,
        model.manifest.version,
        model.manifest.sha256[:12],
        time.perf_counter() - started,
    )
    _report_model(model.manifest.name, model.manifest.version, model.manifest.sha256)
    # A new runtime, not a changed one: what was cached for the old model (its recorder,
    # quality thresholds, Grad-CAM) goes with it; connections, store and decoders are kept.
    return dataclasses.replace(runtime, model=model)


def _report_model(name: str, version: str, sha256: str) -> None:
    """``retinaq_worker_model`` names the model now served, on the device it named before
    (devices do not change with the model, and TensorFlow cannot list them again here)."""
    from worker.metrics import MODEL, record_model

    devices = [
        sample.labels["device"]
        for metric in MODEL.collect()
        for sample in metric.samples
        if "device" in sample.labels
    ]
    record_model(name, version, sha256, devices)


def serve_activated_model() -> WorkerRuntime:
    """Switch this process to the activated model if it holds another; the runtime to use."""
    # Imported here, as worker.celery_app does: importing this module builds nothing.
    from worker.runtime import get_runtime, replace_runtime

    runtime = get_runtime()
    activation = wanted_activation(runtime)
    if activation is None:
        return runtime
    with _switching:
        runtime = get_runtime()
        activation = wanted_activation(runtime)
        if activation is None:
            return runtime
        switched = load_activated(runtime, activation)
        if switched is None:
            return runtime
        replace_runtime(switched)  # what get_runtime hands every task from now on
        return switched


@task_prerun.connect
def _before_task(**_: Any) -> None:
    """Between two tasks: the one place a model may change, so no task sees two."""
    try:
        serve_activated_model()
    except Exception:
        # The runtime itself failed to build: the task reports that, not this check.
        log.exception("could not check the active model before this task")
