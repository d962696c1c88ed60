"""Content-addressed storage and time-ordered ids."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from common.ids import uuid7
from common.storage.files import ImageStore


def test_spool_hashes_and_commits_under_the_digest(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    spool = store.spool()
    for chunk in (b"fundus ", b"bytes"):
        spool.write(chunk)
    relative = store.commit(spool)
    digest = hashlib.sha256(b"fundus bytes").hexdigest()
    assert relative == f"{digest[:2]}/{digest[2:4]}/{digest}"
    assert store.read(relative) == b"fundus bytes"
    assert list(store.tmp_dir.iterdir()) == []


def test_same_bytes_twice_keep_one_file(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    paths = []
    for _ in range(2):
        spool = store.spool()
        spool.write(b"same")
        paths.append(store.commit(spool))
    assert paths[0] == paths[1]
    assert len([p for p in tmp_path.rglob("*") if p.is_file()]) == 1


def test_discarded_spool_leaves_nothing(tmp_path: Path) -> None:
    store = ImageStore(tmp_path)
    spool = store.spool()
    spool.write(b"partial upload")
    spool.discard()
    spool.discard()
    assert list(store.tmp_dir.iterdir()) == []


def test_paths_cannot_escape_the_store(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    with pytest.raises(ValueError, match="escapes"):
        store.path_for("../../etc/passwd")


def test_uuid7_is_version_7_and_strictly_increasing() -> None:
    ids = [uuid7() for _ in range(5000)]
    assert all(i.version == 7 for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
