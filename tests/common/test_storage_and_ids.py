"""The file store's own guard, and time-ordered ids (what every store does is in
tests/common/storage/test_stores.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.ids import uuid7
from common.storage.files import FileStore


def test_paths_cannot_escape_the_store(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    with pytest.raises(ValueError, match="escapes"):
        store.path_for("../../etc/passwd")


def test_uuid7_is_version_7_and_strictly_increasing() -> None:
    ids = [uuid7() for _ in range(5000)]
    assert all(i.version == 7 for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
