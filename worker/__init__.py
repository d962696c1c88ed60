"""Celery worker processes that hold the model and grade images in micro-batches.

``celery -A worker worker`` finds :data:`app` here. It is built on first access, so
importing ``worker.ml.model`` or ``worker.ml.training`` (the benchmark, the trainer) does not
create a Celery app or touch the broker's folders.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app"]


def __getattr__(name: str) -> Any:
    if name == "app":
        from worker.celery_app import app

        return app
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
