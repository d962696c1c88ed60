"""What every store of image and heat-map bytes offers, whatever holds the bytes.

Callers never see where bytes live: they stream an upload into a :class:`HashingSpool` (a
local temporary file, so memory stays bounded), hand synced spools to the store to put in
place under their hash, and read bytes back by the key the database row records. Whether
shared bytes may be placed or removed is decided under a database row lock, in
:mod:`common.storage.blobs`, never from what a store shows.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol


class StoreUnavailable(OSError):
    """The store could not be reached, or refused a request: worth trying again later."""


class HashingSpool:
    """A writable local temporary file that hashes what passes through it."""

    def __init__(self, directory: Path) -> None:
        fd, name = tempfile.mkstemp(prefix="upload-", dir=directory)
        self._file: IO[bytes] = os.fdopen(fd, "w+b")
        self.path = Path(name)
        self._digest = hashlib.sha256()
        self.size = 0
        # Where a remote store has already copied these bytes before the lock is taken.
        self.staged: str | None = None

    def write(self, data: bytes) -> int:
        """Write and hash a chunk."""
        self._digest.update(data)
        self.size += len(data)
        return self._file.write(data)

    def read(self, size: int = -1) -> bytes:
        """Read back (used by callers that inspect small parts such as metadata CSVs)."""
        return self._file.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        """Move within the spooled file."""
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        """Current position."""
        return self._file.tell()

    def flush(self) -> None:
        """Flush buffered bytes to the OS."""
        self._file.flush()

    def close(self) -> None:
        """Close the handle; the temporary file stays until committed or discarded."""
        self._file.close()

    @property
    def closed(self) -> bool:
        """Whether the handle is closed."""
        return self._file.closed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    @property
    def sha256(self) -> str:
        """Hex digest of everything written so far."""
        return self._digest.hexdigest()

    def discard(self) -> None:
        """Remove the local temporary file (idempotent)."""
        self.close()
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class StoredObject:
    """One object in the store, as the orphan sweeper sees it."""

    sha256: str
    relative: str
    modified_at: float


def relative_key(sha256: str) -> str:
    """The key rows record: two fan-out levels, so no folder or listing grows huge."""
    return f"{sha256[:2]}/{sha256[2:4]}/{sha256}"


class ObjectStore(Protocol):
    """Immutable objects named by their SHA-256.

    Putting bytes in place and removing them are only safe under the blob's row lock
    (:mod:`common.storage.blobs`): a store never decides whether bytes are still wanted.
    """

    @property
    def spool_dir(self) -> Path:
        """The local folder uploads are spooled into."""
        ...

    # Both backends subclass this protocol and share the three methods below.

    def relative_path(self, sha256: str) -> str:
        """The key under which these bytes are stored, as image rows record it."""
        return relative_key(sha256)

    def spool(self) -> HashingSpool:
        """A new local temporary file to stream an upload into."""
        return HashingSpool(self.spool_dir)

    def spool_bytes(self, data: bytes) -> HashingSpool:
        """Small bytes made here (a heat map), spooled and synced, ready to place; nothing is
        left behind when syncing fails."""
        spool = self.spool()
        try:
            spool.write(data)
            self.sync([spool])
        except BaseException:
            self.discard(spool)
            raise
        return spool

    def sync(self, spools: list[HashingSpool]) -> None:
        """Make finished spools durable, the slow part, before the caller takes any lock."""
        ...

    def place(self, spool: HashingSpool) -> bool:
        """Put a synced spool in place under its hash (holding its blob's row lock);
        False when the bytes were there already."""
        ...

    def place_all(self, spools: list[HashingSpool]) -> list[bool]:
        """:meth:`place` for each spool (a remote store places several at once)."""
        ...

    def discard(self, spool: HashingSpool) -> None:
        """Drop a spool that will not be placed, and anything :meth:`sync` made of it."""
        ...

    def commit(self, spool: HashingSpool) -> str:
        """Sync and place one spool with no lock, for tools on a private store; its key."""
        ...

    def exists(self, sha256: str) -> bool:
        """Whether the bytes with this hash are in the store."""
        ...

    def remove(self, sha256: str) -> bool:
        """Delete stored bytes (under the blob's row lock); False when already absent."""
        ...

    def trash(self, sha256: str) -> str | None:
        """Set stored bytes aside (under the blob's row lock), to be emptied once the
        deletion commits or restored if it does not; a token naming them, None when absent."""
        ...

    def trash_all(self, shas: list[str]) -> list[str | None]:
        """:meth:`trash` for each hash (a remote store sets several aside at once); all or
        nothing: when one fails, those already set aside are put back before it raises."""
        ...

    def restore(self, sha256: str, aside: str) -> None:
        """Put set-aside bytes back; identical bytes placed meanwhile are simply replaced."""
        ...

    def empty(self, aside: str) -> None:
        """Delete set-aside bytes for good (idempotent)."""
        ...

    def read(self, relative: str) -> bytes:
        """The stored bytes; FileNotFoundError when there are none under that key."""
        ...

    def objects(self) -> Iterator[StoredObject]:
        """Every stored object, for the orphan sweeper; spools and trash are not listed."""
        ...

    def remove_stale_temporaries(self, older_than: float) -> int:
        """Delete spools and set-aside bytes last written before ``older_than`` (a Unix
        time): what a crashed upload left, or a deletion that died before emptying its trash."""
        ...
