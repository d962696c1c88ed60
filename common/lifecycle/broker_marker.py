"""A value the reconciler keeps in the broker, so that it notices when the broker lost its data.

Redis run without persistence, flushed, or failed over to an empty replica comes back
empty: every task it held is gone, and the database cannot tell, since a queued image looks
the same whether its task waits in Redis or vanished. So the reconciler keeps one key of its
own beside the queues, with no expiry (no eviction policy that spares keys without a TTL
takes it, and ``noeviction`` takes nothing). Whatever empties the broker takes the key with
it, so a pass that finds it missing knows that every task sent before may be lost.

Only the reconciler writes the key, and it creates it only when it is missing (``SET NX``);
the API and the workers never touch it, so nothing can put it back between a wipe and the
reconciler's next look. It is named after the grading queue, so two deployments sharing a
Redis database never hide each other's wipes. The key is reached through the Celery app's
own connection (its URL, credentials, key prefix and Sentinel settings), not a second one.
The folder broker of the embedded profile keeps the value as a file at the top of its folder
instead (beside, not in, the queue folder, where it would be taken for a message): deleting
the folder is that broker's wipe.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

import redis
from celery import Celery
from kombu import Connection
from kombu.transport.redis import Channel as RedisChannel

from common.settings import Settings

MARKER_KEY_PREFIX = "retinaq.reconciler-marker:"


class BrokerMarker(Protocol):
    """One value in the broker that disappears with the broker's data."""

    def create(self, value: str) -> bool:
        """Write ``value`` only if there is none; whether this call wrote it."""
        ...

    def read(self) -> str | None:
        """The value, or None when there is none."""
        ...

    def replace(self, value: str) -> bool:
        """Overwrite the value only if there is one (a wipe meanwhile wins); whether it did."""
        ...


@dataclass(frozen=True)
class RedisMarker:
    """The marker as a Redis string key without expiry."""

    client: redis.Redis
    key: str

    def create(self, value: str) -> bool:
        """``SET key value NX``."""
        return bool(self.client.set(self.key, value, nx=True))

    def read(self) -> str | None:
        """``GET key``."""
        raw = self.client.get(self.key)
        return raw.decode() if isinstance(raw, bytes) else raw

    def replace(self, value: str) -> bool:
        """``SET key value XX``."""
        return bool(self.client.set(self.key, value, xx=True))


@dataclass(frozen=True)
class FolderMarker:
    """The marker as a file in the folder broker's folder."""

    path: Path

    def _staged(self, value: str) -> Path:
        staged = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}")
        staged.write_text(value)
        return staged

    def create(self, value: str) -> bool:
        """A hard link fails when the name exists: the file's ``NX``, never half written."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staged = self._staged(value)
        try:
            os.link(staged, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            staged.unlink()

    def read(self) -> str | None:
        """The file's text, or None when it is gone."""
        try:
            return self.path.read_text()
        except FileNotFoundError:
            return None

    def replace(self, value: str) -> bool:
        """Swap the file in atomically, unless it is gone (a deleted folder stays deleted)."""
        if not self.path.exists():
            return False
        os.replace(self._staged(value), self.path)
        return True


@contextmanager
def broker_marker(celery: Celery, settings: Settings) -> Iterator[BrokerMarker | None]:
    """The reconciler's marker on ``celery``'s broker; None on a transport with no place for
    one (neither Redis nor the folder broker), where wipes go unnoticed.

    Raises the broker's connection error when it does not answer, so a pass fails before it
    touches the database."""
    if settings.broker_url.startswith("filesystem://"):
        folder = Path(settings.broker_url.removeprefix("filesystem://"))
        yield FolderMarker(folder / f"reconciler-marker.{settings.queue_name}")
        return
    with cast(Connection, celery.pool.acquire(block=True)) as connection:
        channel = connection.default_channel
        if not isinstance(channel, RedisChannel):
            yield None
            return
        with channel.conn_or_acquire() as client:
            yield RedisMarker(client, f"{MARKER_KEY_PREFIX}{settings.queue_name}")
