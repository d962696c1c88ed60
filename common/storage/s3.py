"""The S3 backend (``s3://bucket/prefix``): bytes live once under their SHA-256 in a bucket.

Endpoint, region and credentials come from the standard AWS chain (``AWS_ENDPOINT_URL``,
``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID`` and the rest, as boto3 reads them), so any
S3-compatible server works and nothing but the URL need be shared between hosts.

The layout mirrors the file backend under the prefix: ``ab/cd/<sha256>`` for stored bytes,
``tmp/`` for uploads staged before their lock is taken, ``trash/`` for bytes a deletion has
set aside until it commits. An upload streams into a local spool while hashing; :meth:`sync`
then sends it to ``tmp/`` (multipart when large, several spools at once), the slow part, before
any lock. Under the blob's row lock :meth:`place` finds out whether the bytes are already
stored and, if not, copies the staged object into place on the server, so a lock is held for a
copy, not for an upload. S3 has no rename, so trash and restore are a copy and a delete.
"""

from __future__ import annotations

import functools
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ParamSpec, TypeVar
from urllib.parse import urlsplit

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from common.storage.base import (
    HashingSpool,
    ObjectStore,
    StoredObject,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

_MIB = 1024 * 1024
# Parts over 8 MiB go multipart (S3's minimum part is 5 MiB), four parts in flight per spool.
_TRANSFER = TransferConfig(
    multipart_threshold=8 * _MIB, multipart_chunksize=8 * _MIB, max_concurrency=4
)
_SPOOLS_AT_ONCE = 8
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}
_STORED = re.compile(r"([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{64})")
_In = TypeVar("_In")
_Out = TypeVar("_Out")
_P = ParamSpec("_P")


def _unavailable(method: Callable[_P, _Out]) -> Callable[_P, _Out]:
    """Whatever S3 or the network says, beyond a missing key, reaches callers as one
    exception they can answer (503) or retry: :class:`StoreUnavailable`."""

    @functools.wraps(method)
    def translated(*args: _P.args, **kwargs: _P.kwargs) -> _Out:
        try:
            return method(*args, **kwargs)
        except (BotoCoreError, ClientError) as error:
            raise _as_unavailable(error) from error

    return translated


def parse_s3_url(url: str) -> tuple[str, str]:
    """The bucket and key prefix of ``s3://bucket[/prefix]`` (the prefix without slashes)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
    return parts.netloc, parts.path.strip("/")


class S3Store(ObjectStore):
    """A bucket (and prefix) of immutable objects named by their SHA-256 (an ObjectStore).

    Putting bytes in place and removing them are only safe under the blob's row lock
    (:mod:`common.storage.blobs`): the store itself never decides whether bytes are still wanted.
    """

    def __init__(self, url: str, spool_dir: Path, client: Any = None) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self._spool_dir = spool_dir
        spool_dir.mkdir(parents=True, exist_ok=True)
        # Room for every part of every spool that sync sends at once.
        pool = Config(max_pool_connections=_SPOOLS_AT_ONCE * _TRANSFER.max_request_concurrency)
        self.client = client if client is not None else boto3.client("s3", config=pool)

    @property
    def spool_dir(self) -> Path:
        """The local folder uploads are spooled into before they are sent."""
        return self._spool_dir

    def key(self, relative: str) -> str:
        """The full object key of a key relative to the prefix."""
        return f"{self.prefix}/{relative}" if self.prefix else relative

    @_unavailable
    def sync(self, spools: list[HashingSpool]) -> None:
        """Stage finished spools in the bucket, several at once, before any lock is taken.

        Bytes the bucket already holds are not sent again; should a purge remove them before
        :meth:`place` runs, place sends them from the local spool under the lock.
        """
        for spool in spools:
            spool.flush()
        self._at_once(self._stage, spools)

    def _stage(self, spool: HashingSpool) -> None:
        if spool.staged is not None or self.exists(spool.sha256):
            return
        staged = self.key(f"tmp/{uuid.uuid4().hex}")
        self.client.upload_file(str(spool.path), self.bucket, staged, Config=_TRANSFER)
        spool.staged = staged

    @_unavailable
    def place(self, spool: HashingSpool) -> bool:
        """Put a synced spool in place under its hash; False when the bytes were there.

        Call it holding the blob's row lock: bytes found present are only still present
        afterwards because no purge can remove them until that lock is released.
        """
        spool.close()
        final = self.key(self.relative_path(spool.sha256))
        try:
            if self.exists(spool.sha256):
                return False
            if spool.staged is not None:
                self._copy(spool.staged, final)
            else:
                self.client.upload_file(str(spool.path), self.bucket, final, Config=_TRANSFER)
            return True
        finally:
            self.discard(spool)

    def place_all(self, spools: list[HashingSpool]) -> list[bool]:
        """Place several spools at once: each is a few round trips, and the locks are held."""
        return self._at_once(self.place, spools)

    def discard(self, spool: HashingSpool) -> None:
        """Remove a spool's local file and whatever :meth:`sync` staged of it."""
        spool.discard()
        if spool.staged is None:
            return
        try:
            self.client.delete_object(Bucket=self.bucket, Key=spool.staged)
        except (BotoCoreError, ClientError) as error:  # the sweeper removes it after its grace
            log.warning("could not remove a staged upload: %s", error.__class__.__name__)
        spool.staged = None

    def commit(self, spool: HashingSpool) -> str:
        """Sync and place one spool with no lock; for tools working on a private store."""
        self.sync([spool])
        self.place(spool)
        return self.relative_path(spool.sha256)

    @_unavailable
    def exists(self, sha256: str) -> bool:
        """Whether the bytes with this hash are in the bucket."""
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(self.relative_path(sha256)))
        except ClientError as error:
            if _not_found(error):
                return False
            raise
        return True

    @_unavailable
    def remove(self, sha256: str) -> bool:
        """Delete stored bytes (under the blob's row lock); False when already absent."""
        if not self.exists(sha256):
            return False
        self.client.delete_object(Bucket=self.bucket, Key=self.key(self.relative_path(sha256)))
        return True

    @_unavailable
    def trash(self, sha256: str) -> str | None:
        """Copy stored bytes under ``trash/`` and delete them (under the blob's row lock), to
        be emptied once the deletion commits or put back if it does not; None when absent."""
        aside = self.key(f"trash/{sha256}.{uuid.uuid4().hex}")
        final = self.key(self.relative_path(sha256))
        try:
            self._copy(final, aside)  # the copy's LastModified says when, for the sweeper
        except ClientError as error:
            if _not_found(error):
                return None
            raise
        self.client.delete_object(Bucket=self.bucket, Key=final)
        return aside

    def trash_all(self, shas: list[str]) -> list[str | None]:
        """Set several hashes aside at once (each is a copy and a delete, under the locks);
        all or nothing: when one fails, the others are put back before it raises."""
        with ThreadPoolExecutor(max(1, min(_SPOOLS_AT_ONCE, len(shas)))) as pool:
            futures = [pool.submit(self.trash, sha) for sha in shas]
        failed = [error for f in futures if (error := f.exception()) is not None]
        if failed:
            for sha, future in zip(shas, futures, strict=True):
                if future.exception() is None and (aside := future.result()) is not None:
                    self.restore(sha, aside)
            raise failed[0]
        return [future.result() for future in futures]

    @_unavailable
    def restore(self, sha256: str, aside: str) -> None:
        """Put trashed bytes back; identical bytes placed meanwhile are simply replaced."""
        self._copy(self._in_trash(aside), self.key(self.relative_path(sha256)))
        self.client.delete_object(Bucket=self.bucket, Key=aside)

    @_unavailable
    def empty(self, aside: str) -> None:
        """Delete trashed bytes for good (idempotent)."""
        self.client.delete_object(Bucket=self.bucket, Key=self._in_trash(aside))

    @_unavailable
    def read(self, relative: str) -> bytes:
        """The stored bytes; FileNotFoundError when there are none under that key."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key(relative))
        except ClientError as error:
            if _not_found(error):
                raise FileNotFoundError(f"no stored object {relative!r}") from error
            raise
        data: bytes = response["Body"].read()
        return data

    def objects(self) -> Iterator[StoredObject]:
        """Every stored object, for the orphan sweeper; staged uploads and trash are not listed."""
        start = len(self.key(""))
        for item in self._listing(self.key("")):
            match = _STORED.fullmatch(item["Key"][start:])
            if match and match[3].startswith(match[1] + match[2]):
                yield StoredObject(match[3], match[0], item["LastModified"].timestamp())

    @_unavailable
    def remove_stale_temporaries(self, older_than: float) -> int:
        """Delete local spools, staged uploads and trashed bytes last written before
        ``older_than``: what a crashed upload left, or a deletion that committed and died
        before emptying its trash. Local spools are this host's only."""
        removed = 0
        for entry in self._spool_dir.iterdir():
            try:
                if entry.is_file() and entry.stat().st_mtime < older_than:
                    entry.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        for folder in ("tmp/", "trash/"):
            for item in self._listing(self.key(folder)):
                if item["LastModified"].timestamp() < older_than:
                    self.client.delete_object(Bucket=self.bucket, Key=item["Key"])
                    removed += 1
        return removed

    def _at_once(self, call: Callable[[_In], _Out], items: list[_In]) -> list[_Out]:
        """``call`` over ``items`` on up to eight threads (boto3 clients are thread-safe)."""
        if len(items) < 2:
            return [call(item) for item in items]
        with ThreadPoolExecutor(min(_SPOOLS_AT_ONCE, len(items))) as pool:
            return list(pool.map(call, items))

    def _listing(self, prefix: str) -> Iterator[dict[str, Any]]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        for page in _pages(iter(pages)):
            yield from page.get("Contents", [])

    def _copy(self, source: str, target: str) -> None:
        """A server-side copy (multipart when large): the bytes never come to this host."""
        self.client.copy(
            {"Bucket": self.bucket, "Key": source}, self.bucket, target, Config=_TRANSFER
        )

    def _in_trash(self, aside: str) -> str:
        if not aside.startswith(self.key("trash/")):
            raise ValueError(f"{aside!r} is not in this store's trash")
        return aside


def _pages(pages: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """A listing's pages as they come (one at a time), its errors as StoreUnavailable."""
    while True:
        try:
            page = next(pages)
        except StopIteration:
            return
        except (BotoCoreError, ClientError) as error:
            raise _as_unavailable(error) from error
        yield page


def _as_unavailable(error: Exception) -> StoreUnavailable:
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "?")
        return StoreUnavailable(f"the S3 store answered {code}")
    return StoreUnavailable(f"the S3 store is unreachable: {error}")


def _not_found(error: ClientError) -> bool:
    return str(error.response.get("Error", {}).get("Code")) in _NOT_FOUND
