"""What a worker process holds for its lifetime: settings, database, store, and the model.

Built once per process, after any fork, so no connection or TensorFlow state is shared
between a parent and its children.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from celery import Celery
from PIL import Image as PILImage
from sqlalchemy.orm import Session, sessionmaker

from common.db.engine import engine_from_settings, make_sessionmaker
from common.db.schema import assert_schema_at_head
from common.imaging.pixel_budget import PixelBudget, budget_pixels
from common.modelling.activation import active_model, serving_model_file
from common.modelling.manifest import ManifestError, read_manifest
from common.queue import make_celery, send_heatmap_task
from common.screening.quality import QualityThresholds
from common.settings import Settings, get_settings
from common.storage import ObjectStore, open_store
from worker.grading.recording import Recorder
from worker.metrics import record_model

if TYPE_CHECKING:
    from worker.ml.gradcam import GradCam
    from worker.ml.model import LoadedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerRuntime:
    """Everything grading needs, loaded once."""

    settings: Settings
    sessions: sessionmaker[Session]
    store: ObjectStore
    model: LoadedModel
    # Decoding threads (Pillow releases the GIL) that run ahead of the one model thread.
    decoder: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(2, thread_name_prefix="decode")
    )
    # Full-resolution pixels all of this process's decoding may hold at once, whatever the
    # number of threads: what bounds a worker's memory under a batch of pixel bombs.
    pixel_budget: PixelBudget = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pixel_budget", PixelBudget(budget_pixels(self.settings)))

    @cached_property
    def quality_thresholds(self) -> QualityThresholds:
        """The check's defaults, under the model's manifest, under the deployment's settings."""
        return self.model.manifest.serving_quality_thresholds(self.settings.quality_thresholds)

    @cached_property
    def recorder(self) -> Recorder:
        """What writing results needs: sessions, the model's manifest, the heat-map settings."""
        return Recorder(
            self.sessions,
            self.model.manifest,
            heatmaps=self.settings.heatmaps,
            borderline_margin=self.settings.borderline_margin,
        )

    @cached_property
    def producer(self) -> Celery:
        """A Celery app for sending heat-map tasks."""
        return make_celery(self.settings, name="retinaq-worker-producer")

    @cached_property
    def gradcam(self) -> GradCam:
        """Grad-CAM for the held model, built on the first heat map this process makes."""
        from worker.ml.gradcam import GradCam

        return GradCam(self.model.keras_model, self.model.batch_size)

    def request_heatmaps(self, image_ids: list[uuid.UUID]) -> None:
        """Queue heat maps for these graded images; grading never waits for them.

        A heat map is an aid to the grader, not part of the result: a broker that cannot
        take the task is logged and the grading stands.
        """
        try:
            send_heatmap_task(self.producer, self.settings, image_ids)
        except Exception:
            log.exception("could not queue heat maps for %d image(s)", len(image_ids))


_lock = threading.Lock()
_runtime: WorkerRuntime | None = None
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
# Pillow allocates a decoded image in blocks of up to 16 MiB. glibc serves blocks that size
# from per-thread arenas once one has been freed, and keeps them there when freed again, so
# sixteen decoder threads would each keep an image's worth resident long after the pixel
# budget let it go (1.8 GB over a 100-megapixel budget, measured). Mapped on their own,
# they go back to the system when freed; smaller allocations are served as before.
MMAP_THRESHOLD_BYTES = 8 * 1024 * 1024


def configure_decoding(settings: Settings) -> None:
    """Process-wide decoding limits: Pillow's own bomb guard, and large blocks unmapped."""
    # Pillow's own decompression-bomb guard, set explicitly to the same limit we enforce.
    PILImage.MAX_IMAGE_PIXELS = settings.max_image_pixels
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        log.info("no mallopt (not glibc): freed image blocks may stay resident")
        return
    if not mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES):
        log.warning("mallopt refused the mmap threshold: freed image blocks may stay resident")


def build_runtime(settings: Settings) -> WorkerRuntime:
    """Check the schema, connect, and load the model to serve: the activated one
    (:mod:`common.modelling.activation`) when this host has its file, else the settings'."""
    engine = engine_from_settings(settings)
    try:
        assert_schema_at_head(engine)
        sessions = make_sessionmaker(engine)
        model_file = startup_model_file(settings, sessions)
    except Exception:
        engine.dispose()
        raise
    from worker.ml.model import configure_devices, load_model  # TensorFlow: after any fork

    configure_decoding(settings)
    devices = configure_devices(expect_gpu=settings.expect_gpu)
    log.info("devices: %s", ", ".join(devices))
    model = load_model(
        model_file,
        settings.grading_batch_size,
        xla=settings.xla,
        mixed_precision=settings.mixed_precision,
    )
    manifest = model.manifest
    record_model(manifest.name, manifest.version, manifest.sha256, devices)
    store = open_store(settings)
    decoder = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
    runtime = WorkerRuntime(settings, sessions, store, model, decoder)
    log.info("quality thresholds: %s", runtime.quality_thresholds.as_dict())  # fail fast
    log.info(
        "decoding: %d threads sharing a budget of %d full-resolution pixels",
        settings.decode_threads,
        runtime.pixel_budget.capacity,
    )
    return runtime


def startup_model_file(settings: Settings, sessions: sessionmaker[Session]) -> Path:
    """The activated model's file if this host holds the activated file, so a worker starts
    on the model it would switch to before its first task instead of loading two; the
    settings' model (logged at ERROR) when this host's copy is missing or different."""
    with sessions() as session:
        activation = active_model(session)
    path = serving_model_file(settings, activation)
    if activation is None or path == settings.model_file:
        return path
    try:
        found = read_manifest(path).sha256
    except ManifestError as error:
        found = f"unreadable ({error})"
    if found != activation.sha256:
        log.error(
            "model %s is activated but this host's copy %s is not it (SHA-256 %s): starting on %s",
            activation.name,
            path,
            found,
            settings.model_file,
        )
        return settings.model_file
    return path


def replace_runtime(runtime: WorkerRuntime) -> None:
    """Make ``runtime`` the one :func:`get_runtime` hands out (a model switch between tasks,
    :mod:`worker.model_switch`)."""
    global _runtime
    with _lock:
        _runtime = runtime


def get_runtime() -> WorkerRuntime:
    """The process's runtime, built on first use."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = build_runtime(get_settings())
        return _runtime
