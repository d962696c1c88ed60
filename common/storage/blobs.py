"""Who may put or remove stored bytes: a ``blobs`` row per SHA-256, locked by both sides.

Identical bytes are stored once and shared by every image (of any batch or programme)
and heat map that names them. Adding a reference and removing the bytes must never
interleave: an upload that finds the file present and skips writing it, while a purge
that saw no reference removes it, loses an image that was accepted with a 202. So both
sides take the blob's row lock in the transaction that adds or removes references:

- a writer locks the row first (``INSERT … ON CONFLICT DO UPDATE`` creates or locks it),
  then puts the bytes in place if they are missing, then inserts the rows naming them;
- a deleter removes its rows first, then locks the blob rows, keeps those something still
  names, and removes the others' bytes *while it still holds the lock*, then their rows.

Whichever commits second sees the first's work: a deleter that waited for a writer finds
its new reference, and a writer that waited for a deleter finds the bytes gone and puts
them back. The lock lives in the database, so it holds across API processes, workers
and hosts, and for either store (a folder or a bucket); on SQLite (the embedded profile)
the database admits one writer at a time, which serialises the same steps. Bytes that a
crash left without a row (put in place, then the transaction died) are found by
:func:`sweep_orphans`, and so are bytes set aside by a deletion that committed and died
before emptying its trash.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import CompoundSelect, delete, exists, select, union
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from common.db.tables import Blob, Image, Result, utcnow
from common.queue import chunked
from common.storage.base import HashingSpool, ObjectStore

log = logging.getLogger(__name__)

# PostgreSQL allows 65,535 bind parameters per statement; stay far below it.
_CHUNK = 1000


def lock_blobs(session: Session, sizes: dict[str, int]) -> None:
    """Create or lock the rows of these hashes, in hash order so two writers never deadlock."""
    rows = [
        {"sha256": sha, "size_bytes": sizes[sha], "created_at": utcnow()} for sha in sorted(sizes)
    ]
    for chunk in chunked(rows, _CHUNK):
        statement = _insert(session).values(chunk)
        # A no-op update rather than DO NOTHING: only an update takes the row lock.
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["sha256"], set_={"sha256": statement.excluded.sha256}
            )
        )


def place_spools(session: Session, store: ObjectStore, spools: list[HashingSpool]) -> list[str]:
    """Lock the spools' blobs, then move each into place unless its bytes are there already.

    The spools must be synced (:meth:`ObjectStore.sync`); returns the hashes this call put
    in place, which a caller that fails before committing should pass to
    :func:`unplace` while it still holds the locks.
    """
    lock_blobs(session, {spool.sha256: spool.size for spool in spools})
    placed = store.place_all(spools)
    return [spool.sha256 for spool, new in zip(spools, placed, strict=True) if new]


def unplace(store: ObjectStore, placed: Iterable[str]) -> None:
    """Remove bytes this transaction put in place and is about to roll back (lock still held)."""
    for sha in placed:
        try:
            store.remove(sha)
        except OSError as error:
            log.warning("could not remove bytes of a failed write: %s", error.__class__.__name__)


@dataclass(frozen=True)
class Release:
    """What releasing some hashes did; ``trashed`` bytes go for good when the caller commits."""

    kept: int
    rows_deleted: int
    trashed: tuple[tuple[str, str], ...]

    @property
    def removed(self) -> int:
        """How many stored objects this release removes."""
        return len(self.trashed)


def release_blobs(session: Session, store: ObjectStore, shas: Iterable[str]) -> Release:
    """Set aside the bytes, and delete the rows, of these blobs that nothing names any more.

    Call it after deleting the rows that named them, in the same transaction, then finish
    with :func:`commit_release`. The bytes leave their place before the commit, while the
    locks are held, which is what makes a concurrent writer waiting on a lock see them
    missing and put them back; they are only set aside, so a deletion that fails to commit
    puts them back too and no row is ever left naming missing bytes.
    """
    kept = rows = 0
    trashed: list[tuple[str, str]] = []
    try:
        for chunk in chunked(sorted(set(shas)), _CHUNK):
            locked = session.scalars(
                select(Blob.sha256)
                .where(Blob.sha256.in_(chunk))
                .order_by(Blob.sha256)
                .with_for_update()
            ).all()
            # A statement after the lock: under READ COMMITTED it sees what the writer we
            # may have waited for committed.
            named = set(session.scalars(_named(list(locked))))
            orphans = [sha for sha in locked if sha not in named]
            kept += len(named)
            for sha, aside in zip(orphans, store.trash_all(orphans), strict=True):
                if aside is not None:
                    trashed.append((sha, aside))
            if orphans:
                session.execute(delete(Blob).where(Blob.sha256.in_(orphans)))
                rows += len(orphans)
    except BaseException:
        # The caller will roll back, so every row it keeps must keep its bytes.
        for sha, aside in trashed:
            store.restore(sha, aside)
        raise
    return Release(kept=kept, rows_deleted=rows, trashed=tuple(trashed))


def commit_release(session: Session, store: ObjectStore, release: Release) -> None:
    """Commit a deletion, then empty its trash; if the commit fails, put the bytes back."""
    try:
        session.commit()
    except BaseException:
        for sha, aside in release.trashed:
            store.restore(sha, aside)
        raise
    for _, aside in release.trashed:
        store.empty(aside)


@dataclass(frozen=True)
class SweepReport:
    """What one sweep found and removed; ``rows_removed`` counts rows that nothing named,
    other than those of the removed objects."""

    objects_checked: int = 0
    objects_removed: int = 0
    rows_removed: int = 0
    spools_removed: int = 0


def sweep_orphans(
    sessions: sessionmaker[Session], store: ObjectStore, grace_s: float
) -> SweepReport:
    """Remove bytes and blob rows that nothing names, once older than ``grace_s``.

    Patient imagery must not outlive its purge, even when a process died between moving
    bytes into place and committing the row that names them, or between committing a
    deletion and removing the bytes. The grace period leaves alone what an upload or a
    heat map in flight is about to name; the row lock makes the removal itself safe.
    """
    cutoff = time.time() - grace_s
    spools = store.remove_stale_temporaries(cutoff)
    checked = removed = rows = 0
    old = (o for o in store.objects() if o.modified_at < cutoff)
    for chunk in chunked(list(old), _CHUNK):
        checked += len(chunk)
        with sessions() as session:
            named = set(session.scalars(_named([o.sha256 for o in chunk])))
        candidates = {o.sha256: 0 for o in chunk if o.sha256 not in named}
        if candidates:
            with sessions() as session:
                lock_blobs(session, candidates)
                outcome = release_blobs(session, store, candidates)
                commit_release(session, store, outcome)
            removed += outcome.removed
    # Rows that nothing names: bytes a crash left between a deletion's commit and their
    # removal, or a heat map whose result was purged before it was recorded.
    with sessions() as session:
        unnamed = session.scalars(
            select(Blob.sha256)
            .where(
                Blob.created_at < utcnow() - timedelta(seconds=grace_s),
                ~exists().where(Image.sha256 == Blob.sha256),
                ~exists().where(Result.heatmap_sha256 == Blob.sha256),
            )
            .order_by(Blob.sha256)
        ).all()
    for chunk in chunked(list(unnamed), _CHUNK):
        with sessions() as session:
            outcome = release_blobs(session, store, chunk)
            commit_release(session, store, outcome)
        removed += outcome.removed
        rows += outcome.rows_deleted
    report = SweepReport(checked, removed, rows, spools)
    if removed or rows or spools:
        log.info("sweeper: %s", report)
    return report


def _named(shas: list[str]) -> CompoundSelect[str | None]:
    """Hashes among ``shas`` that an image or a result's heat map still names."""
    return union(
        select(Image.sha256).where(Image.sha256.in_(shas)),
        select(Result.heatmap_sha256).where(Result.heatmap_sha256.in_(shas)),
    )


def _insert(session: Session) -> postgresql.Insert | sqlite.Insert:
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(Blob)
