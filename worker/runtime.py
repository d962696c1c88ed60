"""What a worker process holds for its lifetime: settings, database, store, and the model.

Built once per process, after any fork, so no connection or TensorFlow state is shared
between a parent and its children.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from PIL import Image as PILImage
from sqlalchemy.orm import Session, sessionmaker

from common.db import engine_from_settings, make_sessionmaker
from common.schema import assert_schema_at_head
from common.settings import Settings, get_settings
from common.storage import ImageStore

if TYPE_CHECKING:
    from worker.model import LoadedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerRuntime:
    """Everything grading needs, loaded once."""

    settings: Settings
    sessions: sessionmaker[Session]
    store: ImageStore
    model: LoadedModel
    # Decoding threads (Pillow releases the GIL) that run ahead of the one model thread.
    decoder: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(2, thread_name_prefix="decode")
    )


_lock = threading.Lock()
_runtime: WorkerRuntime | None = None


def build_runtime(settings: Settings) -> WorkerRuntime:
    """Check the schema, connect, and load the model named by settings."""
    engine = engine_from_settings(settings)
    try:
        assert_schema_at_head(engine)
    except Exception:
        engine.dispose()
        raise
    from worker.model import configure_devices, load_model  # TensorFlow: after any fork

    # Pillow's own decompression-bomb guard, set explicitly to the same limit we enforce.
    PILImage.MAX_IMAGE_PIXELS = settings.max_image_pixels

    devices = configure_devices()
    log.info("devices: %s", ", ".join(devices))
    model = load_model(
        settings.model_path,
        settings.grading_batch_size,
        xla=settings.xla,
        mixed_precision=settings.mixed_precision,
    )
    store = ImageStore(settings.image_store)
    decoder = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
    return WorkerRuntime(settings, make_sessionmaker(engine), store, model, decoder)


def get_runtime() -> WorkerRuntime:
    """The process's runtime, built on first use."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = build_runtime(get_settings())
        return _runtime
