"""The file backend (``file:///…``): bytes live once under their SHA-256 in a folder.

Uploads stream into a temporary file inside the store's folder while being hashed, then
are renamed into place, so a partial upload is never visible and identical images share
one file. Every process that reads or writes must see the same folder (one host, or a
shared volume); :mod:`common.storage.s3` is the backend for nodes that share no disk.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common.storage.base import HashingSpool, ObjectStore, StoredObject

__all__ = ["FileStore", "HashingSpool", "StoredObject"]


class FileStore(ObjectStore):
    """A directory of immutable files named by their SHA-256 (an :class:`ObjectStore`).

    Putting bytes in place and removing them are only safe under the blob's row lock
    (:mod:`common.storage.blobs`): the store itself never decides whether bytes are still wanted.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        self.trash_dir = root / "trash"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.trash_dir.mkdir(parents=True, exist_ok=True)

    @property
    def spool_dir(self) -> Path:
        """Spools live inside the store, so placing one is a rename on the same file system."""
        return self.tmp_dir

    def path_for(self, relative: str) -> Path:
        """Absolute path of a stored object, refusing anything that escapes the store."""
        path = (self.root / relative).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"storage path {relative!r} escapes the store")
        return path

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

    def place_all(self, spools: list[HashingSpool]) -> list[bool]:
        """Place each spool in turn: a rename is quick."""
        return [self.place(spool) for spool in spools]

    def discard(self, spool: HashingSpool) -> None:
        """Remove a spool that will not be placed."""
        spool.discard()

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

    def trash(self, sha256: str) -> str | None:
        """Move stored bytes aside (under the blob's row lock), to be emptied once the
        deletion commits or put back if it does not; None when already absent."""
        aside = self.trash_dir / f"{sha256}.{uuid.uuid4().hex}"
        try:
            os.replace(self.path_for(self.relative_path(sha256)), aside)
        except FileNotFoundError:
            return None
        os.utime(aside)  # its age now says when it was trashed, for the sweeper's grace
        return str(aside)

    def trash_all(self, shas: list[str]) -> list[str | None]:
        """Trash each hash in turn (a rename is quick); all or nothing."""
        done: list[str | None] = []
        try:
            for sha in shas:
                done.append(self.trash(sha))
        except BaseException:
            for sha, aside in zip(shas, done, strict=False):
                if aside is not None:
                    self.restore(sha, aside)
            raise
        return done

    def restore(self, sha256: str, aside: str) -> None:
        """Put trashed bytes back; identical bytes placed meanwhile are simply replaced."""
        final = self.root / self.relative_path(sha256)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._in_trash(aside), final)

    def empty(self, aside: str) -> None:
        """Delete trashed bytes for good (idempotent)."""
        self._in_trash(aside).unlink(missing_ok=True)

    def _in_trash(self, aside: str) -> Path:
        path = Path(aside)
        if path.parent != self.trash_dir:
            raise ValueError(f"{aside!r} is not in this store's trash")
        return path

    def read(self, relative: str) -> bytes:
        """The stored bytes; FileNotFoundError when there are none under that key."""
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
