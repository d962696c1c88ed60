"""Stored bytes that nothing names: heat maps racing a purge, and the orphan sweeper, on
both stores (a folder, and a bucket on a real S3 server).

The sweeper is tested as an operator meets it too: ``retinaq admin sweep`` and a
``retinaq reconcile --once`` pass, against the real database and image store.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from cli.main import cli
from common.db.tables import Blob, Image, Result, utcnow
from common.lifecycle.retention import purge_batch
from common.settings import Settings, get_settings
from common.storage import ObjectStore, blobs
from common.storage.blobs import lock_blobs, sweep_orphans
from common.storage.files import FileStore
from tests.support import REPO_ROOT, STORES
from worker.grading import heatmaps
from worker.grading.pipeline import grade_images
from worker.runtime import WorkerRuntime

HOUR = 3600.0


# Bytes written before a pause of SETTLE_S are older than GRACE_S, those after it younger:
# S3 cannot backdate an object, so the tests that run on both stores wait instead. S3 times
# are whole seconds, so the sweep has GRACE_S - 1 seconds to start after the young bytes.
GRACE_S = 3.0
SETTLE_S = 4.5
on_both_stores = pytest.mark.parametrize("storage", STORES, indirect=True)


def _stored(store: ObjectStore, data: bytes, *, age_s: float = 0) -> str:
    """Put bytes straight into the store (as a crashed writer would), aged by ``age_s``
    (which only a file store can do)."""
    spool = store.spool()
    spool.write(data)
    relative = store.commit(spool)
    if age_s:
        assert isinstance(store, FileStore)
        then = time.time() - age_s
        os.utime(store.root / relative, (then, then))
    return spool.sha256


def _submit(client: FlaskClient, auth: dict[str, str], photos: list[bytes]) -> dict:
    parts = [(io.BytesIO(data), f"{n}.jpg") for n, data in enumerate(photos)]
    response = client.post("/v1/batches", headers=auth, data={"images": parts})
    assert response.status_code == 202
    return response.get_json()


def _image_ids(sessions: sessionmaker[Session], batch_id: str) -> list[uuid.UUID]:
    with sessions() as session:
        return list(session.scalars(select(Image.id).where(Image.batch_id == uuid.UUID(batch_id))))


@on_both_stores
def test_a_heat_map_for_a_result_purged_meanwhile_leaves_no_bytes(
    client: FlaskClient,
    auth: dict[str, str],
    runtime: WorkerRuntime,
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batch = _submit(client, auth, [fundus_jpeg(grade=4, seed=3)])
    ids = _image_ids(sessions, batch["id"])
    assert grade_images(runtime, ids).graded == 1
    real_render = heatmaps.render_overlay

    def render_while_the_batch_is_purged(*args: object) -> bytes:
        with sessions() as session:
            purge_batch(session, runtime.store, uuid.UUID(batch["id"]))
        return real_render(*args)

    monkeypatch.setattr(heatmaps, "render_overlay", render_while_the_batch_is_purged)
    assert heatmaps.make_heatmaps(runtime, ids) == 0
    assert list(runtime.store.objects()) == [], "no heat map outlives its purged result"
    with sessions() as session:
        assert session.scalars(select(Blob.sha256)).all() == []


@on_both_stores
def test_a_heat_map_is_stored_with_its_blob_row(
    client: FlaskClient,
    auth: dict[str, str],
    runtime: WorkerRuntime,
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
) -> None:
    batch = _submit(client, auth, [fundus_jpeg(grade=4, seed=3)])
    ids = _image_ids(sessions, batch["id"])
    grade_images(runtime, ids)
    assert heatmaps.make_heatmaps(runtime, ids) == 1
    with sessions() as session:
        heatmap = session.scalars(select(Result.heatmap_sha256)).one()
        blob = session.get_one(Blob, heatmap)
    assert blob.size_bytes == len(runtime.store.read(runtime.store.relative_path(heatmap)))
    assert list(runtime.store.spool_dir.iterdir()) == []


@on_both_stores
def test_the_sweeper_removes_only_old_bytes_that_nothing_names(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    store: ObjectStore,
) -> None:
    named = _submit(client, auth, [fundus_jpeg(seed=1)])  # old, but named
    with sessions() as session:
        named_sha = session.scalars(select(Image.sha256)).one()
    old_orphan = _stored(store, b"orphan left by a crash")
    stale_spool = store.spool()
    stale_spool.write(b"half an upload")
    stale_spool.close()
    # A row whose bytes were removed by hand, and a named one made long ago.
    with sessions.begin() as session:
        lock_blobs(session, {"f" * 64: 1})
        session.execute(update(Blob).values(created_at=utcnow() - timedelta(hours=2)))
    time.sleep(SETTLE_S)
    young_orphan = _stored(store, b"an upload about to commit")
    fresh_spool = store.spool()
    fresh_spool.write(b"an upload in progress")
    fresh_spool.close()

    report = sweep_orphans(sessions, store, grace_s=GRACE_S)

    assert (report.objects_removed, report.rows_removed, report.spools_removed) == (1, 1, 1)
    assert report.objects_checked == 2  # the named and the old orphan; the young one is spared
    assert not store.exists(old_orphan)
    assert store.exists(young_orphan)
    assert store.exists(named_sha)
    assert not stale_spool.path.exists()
    assert fresh_spool.path.exists()
    with sessions() as session:
        assert session.scalars(select(Blob.sha256)).all() == [named_sha]
    graded = client.get(named["links"]["self"], headers=auth)
    assert graded.status_code == 200

    again = sweep_orphans(sessions, store, grace_s=GRACE_S)
    assert (again.objects_removed, again.rows_removed, again.spools_removed) == (0, 0, 0)


@pytest.fixture
def operator_env(
    settings: Settings, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """The environment an operator's ``retinaq`` commands run with, for these settings."""
    env = {
        "RETINAQ_DATABASE_URL": database_url,
        "RETINAQ_BROKER_URL": settings.broker_url,
        "RETINAQ_QUEUE_NAME": settings.queue_name,
        "RETINAQ_VAR_DIR": str(settings.var_dir),
        "RETINAQ_STORAGE_URL": settings.storage_url,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield env
    get_settings.cache_clear()


def test_admin_sweep_reports_what_it_removed(
    store: ObjectStore, operator_env: dict[str, str]
) -> None:
    orphan = _stored(store, b"bytes of a purged batch", age_s=3 * HOUR)
    kept = _stored(store, b"bytes younger than the grace", age_s=10 * 60)

    result = CliRunner().invoke(cli, ["admin", "sweep", "--grace", "30m"])

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "stored objects older than 1800s checked: 1" in lines
    assert "unnamed objects removed: 1" in lines
    assert not store.exists(orphan)
    assert store.exists(kept)
    refused = CliRunner().invoke(cli, ["admin", "sweep", "--grace", "soon"])
    assert refused.exit_code == 2


def test_the_reconciler_sweeps_on_its_first_pass(
    store: ObjectStore, operator_env: dict[str, str], tmp_path: Path
) -> None:
    orphan = _stored(store, b"bytes a crashed upload left", age_s=2 * HOUR)
    result = subprocess.run(
        [sys.executable, "-m", "cli", "reconcile", "--once"],
        env={**os.environ, **operator_env},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "orphans_removed=1" in result.stdout
    assert not store.exists(orphan)


@pytest.mark.parametrize("storage", ["s3"], indirect=True)
def test_admin_sweep_removes_old_orphans_from_an_s3_store(
    store: ObjectStore, operator_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    orphan = _stored(store, b"bytes of a purged batch")
    later = time.time() + 3 * HOUR  # the orphan is three hours old by the sweeper's clock
    monkeypatch.setattr(blobs, "time", SimpleNamespace(time=lambda: later))

    result = CliRunner().invoke(cli, ["admin", "sweep", "--grace", "30m"])

    assert result.exit_code == 0, result.output
    assert "unnamed objects removed: 1" in result.output.splitlines()
    assert not store.exists(orphan)
