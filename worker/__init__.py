"""Celery worker processes that hold the model and grade images in micro-batches.

``celery -A worker worker`` finds :data:`app` here.
"""

from worker.celery_app import app

__all__ = ["app"]
