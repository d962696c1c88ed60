"""Content-addressed image storage: bytes live once under their SHA-256, written atomically.

Uploads stream into a temporary file in the store while being hashed, then are renamed
into place, so a partial upload is never visible and identical images share one file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
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


class ImageStore:
    """A directory of immutable files named by their SHA-256."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

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

    def commit(self, spool: HashingSpool) -> str:
        """Move one finished spool into place under its hash; returns the relative path."""
        return self.commit_all([spool])[0]

    def commit_all(self, spools: list[HashingSpool]) -> list[str]:
        """Make finished spools durable, then move each into place under its hash.

        The fsyncs run concurrently (they release the GIL and the device overlaps them), so
        a 64-image upload waits for the disk about once rather than 64 times in a row.
        """
        for spool in spools:
            spool.flush()
        if len(spools) > 1:
            with ThreadPoolExecutor(min(8, len(spools))) as pool:
                list(pool.map(lambda s: os.fsync(s.fileno()), spools))
        elif spools:
            os.fsync(spools[0].fileno())
        relatives = []
        for spool in spools:
            spool.close()
            relative = self.relative_path(spool.sha256)
            final = self.root / relative
            if final.exists():
                spool.discard()
            else:
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(spool.path, final)
            relatives.append(relative)
        return relatives

    def put(self, data: bytes) -> str:
        """Store small bytes made here (a heat map) under their hash; returns the hash."""
        spool = self.spool()
        spool.write(data)
        self.commit(spool)
        return spool.sha256

    def read(self, relative: str) -> bytes:
        """The stored bytes."""
        return self.path_for(relative).read_bytes()
