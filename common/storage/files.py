"""Content-addressed image storage: bytes live once under their SHA-256, written atomically.

Uploads stream into a temporary file in the store while being hashed, then are renamed
into place, so a partial upload is never visible and identical images share one file.
Whether shared bytes may be placed or removed is decided under a database row lock, in
:mod:`common.storage.blobs`, never from what the file system shows.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any


class HashingSpool:
    """A writable temporary file in the store that hashes what passes through it."""

    def __init__(self, store: ImageStore) -> None:
        fd, name = tempfile.mkstemp(prefix="upload-", dir=store.tmp_dir)
        self._file: IO[bytes] = os.fdopen(fd, "w+b")
        self.path = Path(name)
        self._digest = hashlib.sha256()
        self.size = 0

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
        """Remove the temporary file (idempotent)."""
        self.close()
        self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class StoredObject:
    """One file in the store, as the orphan sweeper sees it."""

    sha256: str
    relative: str
    modified_at: float


class ImageStore:
    """A directory of immutable files named by their SHA-256.

    Putting bytes in place and removing them are only safe under the blob's row lock
    (:mod:`common.storage.blobs`): the store itself never decides whether bytes are still wanted.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        self.trash_dir = root / "trash"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.trash_dir.mkdir(parents=True, exist_ok=True)

    def relative_path(self, sha256: str) -> str:
        """Fan out over two directory levels so no directory grows huge."""
        return f"{sha256[:2]}/{sha256[2:4]}/{sha256}"

    def path_for(self, relative: str) -> Path:
        """Absolute path of a stored object, refusing anything that escapes the store."""
        path = (self.root / relative).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"storage path {relative!r} escapes the store")
        return path

    def spool(self) -> HashingSpool:
        """A new temporary file to stream an upload into."""
        return HashingSpool(self)

    def spool_bytes(self, data: bytes) -> HashingSpool:
        """Small bytes made here (a heat map), spooled and made durable, ready to place."""
        spool = self.spool()
        spool.write(data)
        self.sync([spool])
        return spool

    def sync(self, spools: list[HashingSpool]) -> None:
        """Make finished spools durable before anything refers to them.

        The fsyncs run concurrently (they release the GIL and the device overlaps them), so
        a 64-image upload waits for the disk about once rather than 64 times in a row. This
        is the slow part, so it runs before the caller takes any lock.
        """
        for spool in spools:
            spool.flush()
        if len(spools) > 1:
            with ThreadPoolExecutor(min(8, len(spools))) as pool:
                list(pool.map(lambda s: os.fsync(s.fileno()), spools))
        elif spools:
            os.fsync(spools[0].fileno())

    def place(self, spool: HashingSpool) -> bool:
        """Move a synced spool into place under its hash; False when the bytes were there.

        Call it holding the blob's row lock: a file found present is only still present
        afterwards because no purge can remove it until that lock is released.
        """
        spool.close()
        final = self.root / self.relative_path(spool.sha256)
        if final.exists():
            spool.discard()
            return False
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(spool.path, final)
        return True

    def commit(self, spool: HashingSpool) -> str:
        """Sync and place one spool with no lock; for tools working on a private store."""
        self.sync([spool])
        self.place(spool)
        return self.relative_path(spool.sha256)

    def exists(self, sha256: str) -> bool:
        """Whether the bytes with this hash are in the store."""
        return (self.root / self.relative_path(sha256)).exists()

    def remove(self, sha256: str) -> bool:
        """Delete stored bytes (under the blob's row lock); False when already absent."""
        try:
            self.path_for(self.relative_path(sha256)).unlink()
            return True
        except FileNotFoundError:
            return False

    def trash(self, sha256: str) -> Path | None:
        """Move stored bytes aside (under the blob's row lock), to be emptied once the
        deletion commits or put back if it does not; None when already absent."""
        aside = self.trash_dir / f"{sha256}.{uuid.uuid4().hex}"
        try:
            os.replace(self.path_for(self.relative_path(sha256)), aside)
        except FileNotFoundError:
            return None
        os.utime(aside)  # its age now says when it was trashed, for the sweeper's grace
        return aside

    def restore(self, sha256: str, aside: Path) -> None:
        """Put trashed bytes back; identical bytes placed meanwhile are simply replaced."""
        final = self.root / self.relative_path(sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(aside, final)

    def read(self, relative: str) -> bytes:
        """The stored bytes."""
        return self.path_for(relative).read_bytes()

    def objects(self) -> Iterator[StoredObject]:
        """Every stored object, for the orphan sweeper; temporary spools are not listed."""
        for first in sorted(self.root.iterdir()):
            if not (first.is_dir() and _is_fan(first.name)):
                continue
            for second in sorted(first.iterdir()):
                if not (second.is_dir() and _is_fan(second.name)):
                    continue
                for entry in sorted(second.iterdir()):
                    if _SHA256.fullmatch(entry.name) and entry.is_file():
                        yield StoredObject(
                            entry.name,
                            self.relative_path(entry.name),
                            entry.stat().st_mtime,
                        )

    def remove_stale_temporaries(self, older_than: float) -> int:
        """Delete spools and trashed bytes last written before ``older_than``: what a crashed
        upload left, or a deletion that committed and died before emptying its trash."""
        removed = 0
        for folder in (self.tmp_dir, self.trash_dir):
            for entry in folder.iterdir():
                try:
                    if entry.is_file() and entry.stat().st_mtime < older_than:
                        entry.unlink()
                        removed += 1
                except FileNotFoundError:
                    pass
        return removed


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _is_fan(name: str) -> bool:
    return len(name) == 2 and all(ch in "0123456789abcdef" for ch in name)
