"""Where image and heat-map bytes live: content-addressed objects, and who may place or
remove them. The store is chosen by URL: ``file:///…`` (:mod:`.files`) or ``s3://…``
(:mod:`.s3`, imported only when used)."""

from __future__ import annotations

from common.settings import Settings
from common.storage.base import ObjectStore
from common.storage.files import FileStore


def open_store(settings: Settings) -> ObjectStore:
    """The store ``settings.storage_url`` names; boto3 is imported only for an S3 one."""
    if settings.storage_url.startswith("s3:"):
        from common.storage.s3 import S3Store

        return S3Store(settings.storage_url, settings.upload_spool_dir)
    return FileStore(settings.image_store)


__all__ = ["ObjectStore", "open_store"]
