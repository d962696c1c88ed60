"""What every store does, on both backends: a folder, and a bucket on a real S3 server.

The S3 store runs against a private SeaweedFS (tests/support.py), never a mock.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from common.db.tables import Image
from common.settings import Settings
from common.storage import ObjectStore, open_store
from common.storage.files import FileStore
from common.storage.s3 import S3Store
from tests.support import S3_BUCKET, STORES, free_port


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """An empty store of each kind, without a database."""
    if request.param == "s3":
        request.getfixturevalue("s3_server")
        return S3Store(f"s3://{S3_BUCKET}/{uuid.uuid4().hex}", tmp_path / "spool")
    return FileStore(tmp_path / "images")


def _put(store: ObjectStore, data: bytes) -> str:
    spool = store.spool()
    spool.write(data)
    return store.commit(spool)


def _remote_leftovers(store: ObjectStore) -> list[str]:
    """Staged uploads and trash an S3 store still holds (a file store keeps them locally)."""
    if isinstance(store, S3Store):
        listing = store.client.list_objects_v2(Bucket=store.bucket, Prefix=store.key(""))
        return [
            item["Key"]
            for item in listing.get("Contents", [])
            if item["Key"].startswith((store.key("tmp/"), store.key("trash/")))
        ]
    assert isinstance(store, FileStore)
    return [p.name for p in store.trash_dir.iterdir()]


def test_spool_hashes_and_commits_under_the_digest(store: ObjectStore) -> None:
    spool = store.spool()
    for chunk in (b"fundus ", b"bytes"):
        spool.write(chunk)
    relative = store.commit(spool)
    digest = hashlib.sha256(b"fundus bytes").hexdigest()
    assert relative == f"{digest[:2]}/{digest[2:4]}/{digest}"
    assert store.read(relative) == b"fundus bytes"
    assert store.exists(digest)
    assert list(store.spool_dir.iterdir()) == []
    assert _remote_leftovers(store) == []


def test_same_bytes_twice_keep_one_object(store: ObjectStore) -> None:
    first, second = _put(store, b"same"), _put(store, b"same")
    assert first == second
    assert [o.relative for o in store.objects()] == [first]
    assert _remote_leftovers(store) == [], "the second copy was never left staged"


def test_placing_under_the_lock_says_whether_the_bytes_were_there(store: ObjectStore) -> None:
    spools = []
    for _ in range(2):
        spool = store.spool()
        spool.write(b"identical upload")
        spools.append(spool)
    store.sync(spools)  # both synced before either is placed, as two racing requests do
    assert [store.place(spool) for spool in spools] == [True, False]
    assert [o.relative for o in store.objects()] == [store.relative_path(spools[0].sha256)]
    assert list(store.spool_dir.iterdir()) == [] and _remote_leftovers(store) == []


def test_bytes_removed_between_sync_and_place_are_sent_again(store: ObjectStore) -> None:
    sha = hashlib.sha256(b"purged meanwhile").hexdigest()
    _put(store, b"purged meanwhile")
    spool = store.spool()
    spool.write(b"purged meanwhile")
    store.sync([spool])  # finds the bytes stored, so stages nothing
    assert store.remove(sha)  # a purge holding the lock first
    assert store.place(spool)
    assert store.read(store.relative_path(sha)) == b"purged meanwhile"


def test_discarded_spool_leaves_nothing(store: ObjectStore) -> None:
    spool = store.spool()
    spool.write(b"partial upload")
    store.sync([spool])
    store.discard(spool)
    store.discard(spool)
    assert list(store.spool_dir.iterdir()) == []
    assert list(store.objects()) == [] and _remote_leftovers(store) == []


def test_a_large_upload_goes_in_parts_and_reads_back_whole(store: ObjectStore) -> None:
    data = os.urandom(20 * 1024 * 1024 + 123)  # over the multipart threshold: three parts
    relative = _put(store, data)
    assert store.read(relative) == data


def test_missing_bytes_read_as_file_not_found(store: ObjectStore) -> None:
    with pytest.raises(FileNotFoundError):
        store.read(store.relative_path("0" * 64))
    assert not store.exists("0" * 64)
    assert not store.remove("0" * 64)
    assert store.trash("0" * 64) is None


def test_trash_sets_bytes_aside_until_emptied_or_restored(store: ObjectStore) -> None:
    sha = hashlib.sha256(b"purged").hexdigest()
    _put(store, b"purged")
    aside = store.trash(sha)
    assert aside is not None and not store.exists(sha)
    assert list(store.objects()) == [], "trash is not a stored object"
    store.restore(sha, aside)
    assert store.read(store.relative_path(sha)) == b"purged"
    assert _remote_leftovers(store) == []
    aside = store.trash(sha)
    assert aside is not None
    store.empty(aside)
    store.empty(aside)
    assert not store.exists(sha) and _remote_leftovers(store) == []
    with pytest.raises(ValueError, match="trash"):
        store.empty(store.relative_path(sha))


def test_trashing_many_is_all_or_nothing(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    datas = [b"first", b"second", b"third"]
    for data in datas:
        _put(store, data)
    shas = [hashlib.sha256(data).hexdigest() for data in datas]
    real_trash = store.trash

    def fail_on_the_second(sha: str) -> str | None:
        if sha == shas[1]:
            raise OSError("the store went away")
        return real_trash(sha)

    monkeypatch.setattr(store, "trash", fail_on_the_second)
    with pytest.raises(OSError, match="went away"):
        store.trash_all(shas)
    assert all(store.exists(sha) for sha in shas), "what was set aside is back in place"
    assert _remote_leftovers(store) == []
    monkeypatch.setattr(store, "trash", real_trash)
    asides = store.trash_all([*shas, "0" * 64])
    assert asides[-1] is None and not any(store.exists(sha) for sha in shas)


def test_stale_temporaries_go_and_fresh_ones_stay(store: ObjectStore) -> None:
    kept = _put(store, b"stored bytes are never temporaries")
    _put(store, b"trashed")
    trashed = store.trash(hashlib.sha256(b"trashed").hexdigest())
    staged = store.spool()
    staged.write(b"staged, then the process died")
    store.sync([staged])
    staged.close()
    local = store.spool()
    local.write(b"spooled, then the process died")
    local.close()
    assert trashed is not None
    assert store.remove_stale_temporaries(time.time() - 3600) == 0
    # Every temporary is older than a cutoff a little in the future (S3 times are whole seconds).
    assert store.remove_stale_temporaries(time.time() + 2) == 3 + int(
        isinstance(store, S3Store)  # the staged copy, besides its local spool
    )
    assert list(store.spool_dir.iterdir()) == [] and _remote_leftovers(store) == []
    assert [o.relative for o in store.objects()] == [kept]


def test_settings_choose_the_store_by_url(tmp_path: Path) -> None:
    by_dir = Settings(var_dir=tmp_path, storage_dir=tmp_path / "images")
    assert by_dir.storage_url == (tmp_path / "images").resolve().as_uri()
    assert isinstance(open_store(by_dir), FileStore)
    by_url = Settings(var_dir=tmp_path, storage_url=f"file://{tmp_path}/elsewhere")
    assert by_url.image_store == tmp_path / "elsewhere"
    default = Settings(var_dir=tmp_path)
    assert default.image_store == tmp_path.resolve() / "images"
    s3 = Settings(var_dir=tmp_path, storage_url="s3://bucket/some/prefix")
    assert s3.storage_dir is None and s3.upload_spool_dir == tmp_path / "spool"
    with pytest.raises(ValueError, match="not a folder"):
        _ = s3.image_store
    for wrong in ("gs://bucket", "file://relative/path", "s3:///no-bucket"):
        with pytest.raises(ValueError, match="RETINAQ_STORAGE_URL"):
            Settings(var_dir=tmp_path, storage_url=wrong)
    # A URL wins over the folder (which the container images set by default).
    url = f"file://{tmp_path}/a"
    assert Settings(var_dir=tmp_path, storage_url=url, storage_dir=tmp_path / "b").image_store == (
        tmp_path / "a"
    )
    moved = Settings(var_dir=tmp_path, storage_url="s3://bucket", storage_dir=tmp_path / "b")
    assert isinstance(open_store(moved), S3Store) and moved.storage_dir is None


@pytest.mark.parametrize("storage", ["s3"], indirect=True)
def test_an_upload_to_an_unreachable_s3_store_is_503_and_records_nothing(
    make_app: Callable[..., Flask],
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    app = make_app()
    photo = [(io.BytesIO(fundus_jpeg()), "eye.jpg")]
    response = app.test_client().post("/v1/batches", headers=auth, data={"images": photo})
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "storage_unavailable"
    assert response.headers["Retry-After"] == "5"
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Image)) == 0
    assert list(app.extensions["retinaq"].store.spool_dir.iterdir()) == []
