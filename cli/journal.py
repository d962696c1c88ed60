"""The submit journal: what an interrupted ``retinaq submit`` had sent, so ``--resume`` ends it.

A small JSON file beside the submission (``FOLDER/.retinaq-submit.json``), replaced
atomically (a temporary file renamed over it) before the batch is created, once the
chunks are planned, and after every chunk the API acknowledged. It names the API origin
and the batch, each file by its relative path with size, mtime and SHA-256, and each
chunk's files and ``Idempotency-Key``. Keys are written before their request is sent, so
a resumed run that re-sends a chunk whose answer was lost gets the API's stored answer (a
replay), never a second copy. The journal is a hint, not the truth: a resumed run asks
the API which files the batch holds and sends only the others. It is deleted once the
batch is closed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

JOURNAL_NAME = ".retinaq-submit.json"
VERSION = 1
_READ_BLOCK = 1 << 20


class JournalError(RuntimeError):
    """The journal cannot be used for this run (missing, unreadable, or for another API)."""


@dataclass(frozen=True)
class FileRecord:
    """A file as it was when planned: a changed file must not pass for the one sent."""

    size: int
    mtime_ns: int
    sha256: str


@dataclass
class ChunkRecord:
    """One upload request: its files and the key that makes re-sending it safe."""

    key: str
    files: list[str]
    acknowledged: bool = False


@dataclass
class Journal:
    """One submission's state; ``save`` after every change a crash must not lose.

    Without a ``path`` (a caller that cannot resume, such as the demo) it lives in memory.
    """

    path: Path | None
    api_origin: str
    create_key: str
    reference: str | None
    metadata_sha256: str
    files: dict[str, FileRecord]
    batch_id: str | None = None
    status_url: str | None = None
    chunks: list[ChunkRecord] = field(default_factory=list)

    def save(self) -> None:
        """Replace the file atomically: a crash leaves the old journal or the new, never half."""
        if self.path is None:
            return
        document = {
            "version": VERSION,
            "api_origin": self.api_origin,
            "batch_id": self.batch_id,
            "status_url": self.status_url,
            "create_key": self.create_key,
            "reference": self.reference,
            "metadata_sha256": self.metadata_sha256,
            "files": {name: asdict(record) for name, record in self.files.items()},
            "chunks": [asdict(chunk) for chunk in self.chunks],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".retinaq-submit-", dir=self.path.parent)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(document, out, indent=1)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def remove(self) -> None:
        """The batch is closed: nothing is left to resume."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def load_journal(path: Path) -> Journal | None:
    """The journal at ``path``, None when there is none; JournalError when unreadable."""
    try:
        document: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise JournalError(f"the submit journal {path} cannot be read ({error})") from error
    if not isinstance(document, dict) or document.get("version") != VERSION:
        raise JournalError(f"the submit journal {path} is not one this version of retinaq wrote")
    try:
        return Journal(
            path=path,
            api_origin=document["api_origin"],
            create_key=document["create_key"],
            reference=document["reference"],
            metadata_sha256=document["metadata_sha256"],
            files={name: FileRecord(**record) for name, record in document["files"].items()},
            batch_id=document["batch_id"],
            status_url=document["status_url"],
            chunks=[ChunkRecord(**chunk) for chunk in document["chunks"]],
        )
    except (KeyError, TypeError, AttributeError) as error:
        raise JournalError(f"the submit journal {path} is damaged ({error!r})") from error


def journal_path(paths: list[Path]) -> Path:
    """Beside the submission: inside the one folder given, else in the files' common folder."""
    if len(paths) == 1 and paths[0].is_dir():
        return paths[0] / JOURNAL_NAME
    folders = [str((p if p.is_dir() else p.parent).resolve()) for p in paths]
    return Path(os.path.commonpath(folders)) / JOURNAL_NAME


def file_record(path: Path, previous: FileRecord | None = None) -> FileRecord:
    """Size, mtime and SHA-256 of ``path``; the hash is reused when size and mtime agree."""
    stat = path.stat()
    if previous and previous.size == stat.st_size and previous.mtime_ns == stat.st_mtime_ns:
        return previous
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_READ_BLOCK):
            digest.update(block)
    return FileRecord(stat.st_size, stat.st_mtime_ns, digest.hexdigest())


def metadata_digest(rows: dict[str, dict[str, str]]) -> str:
    """SHA-256 of the resolved metadata: a chunk re-sent with other metadata is another request."""
    canonical = json.dumps(rows, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
