"""A purge racing an upload of identical bytes, over HTTP: no accepted image loses its bytes.

Programme A purges a batch while programme B uploads the same photographs. Each side is
paused at the moment that used to lose B's files (B between placing its bytes and inserting
its rows; A between removing bytes and committing), so the interleaving is the same every
run; a last test lets the two race freely, as a hostile programme would. Every test runs on
both stores (a folder, and a bucket on a real S3 server).
"""

from __future__ import annotations

import io
import random
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from common.db.tables import Blob, Image
from common.storage import ObjectStore
from tests.support import STORES, temporaries

pytestmark = pytest.mark.parametrize("storage", STORES, indirect=True)


def _parts(photos: list[bytes]) -> dict[str, Any]:
    return {"images": [(io.BytesIO(data), f"{n}.jpg") for n, data in enumerate(photos)]}


def _missing_bytes(sessions: sessionmaker[Session], store: ObjectStore, batch_id: str) -> list[str]:
    """Storage paths of the batch's images whose bytes are not in the store."""
    with sessions() as session:
        paths = session.scalars(
            select(Image.storage_path).where(Image.batch_id == uuid.UUID(batch_id))
        ).all()
    return [path for path in paths if not store.exists(path.rsplit("/", 1)[-1])]


class Gate:
    """Holds one thread at the first statement matching ``prefix`` until released."""

    def __init__(self, prefix: str, thread_name: str) -> None:
        self.prefix = prefix.upper()
        self.thread_name = thread_name
        self.reached = threading.Event()
        self.release = threading.Event()

    def __call__(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if (
            threading.current_thread().name == self.thread_name
            and not self.reached.is_set()
            and statement.lstrip().upper().startswith(self.prefix)
        ):
            self.reached.set()
            self.release.wait(30)


@pytest.fixture
def gate(app: Flask) -> Iterator[Callable[[str, str], Gate]]:
    """Install statement gates on the API's engine; removed after the test."""
    engine = app.extensions["retinaq"].engine
    installed: list[Gate] = []

    def install(prefix: str, thread_name: str) -> Gate:
        gate = Gate(prefix, thread_name)
        event.listen(engine, "before_cursor_execute", gate)
        installed.append(gate)
        return gate

    yield install
    for gate in installed:
        gate.release.set()
        event.remove(engine, "before_cursor_execute", gate)


def _in_thread(name: str, call: Callable[[], Any], into: dict[str, Any]) -> threading.Thread:
    thread = threading.Thread(target=lambda: into.__setitem__(name, call()), name=name)
    thread.start()
    return thread


def test_a_purge_waits_for_an_upload_of_the_same_bytes_that_is_in_flight(
    app: Flask,
    client: FlaskClient,
    make_programme: Callable[[str], dict[str, str]],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    gate: Callable[[str, str], Gate],
) -> None:
    store: ObjectStore = app.extensions["retinaq"].store
    a, b = make_programme("A"), make_programme("B")
    photos = [fundus_jpeg(seed=n) for n in range(3)]
    doomed = client.post("/v1/batches", headers=a, data=_parts(photos)).get_json()

    # B has stored its bytes (they were there already) and is about to insert its rows.
    upload_paused = gate("INSERT INTO images", "upload-b")
    answers: dict[str, Any] = {}
    upload = _in_thread(
        "upload-b",
        lambda: app.test_client().post("/v1/batches", headers=b, data=_parts(photos)),
        answers,
    )
    assert upload_paused.reached.wait(30)
    purge = _in_thread(
        "purge-a",
        lambda: app.test_client().delete(f"/v1/batches/{doomed['id']}?purge=true", headers=a),
        answers,
    )
    purge.join(1.5)
    purge_waited = purge.is_alive()
    upload_paused.release.set()
    upload.join(30)
    purge.join(30)

    assert answers["upload-b"].status_code == 202
    assert answers["purge-a"].status_code == 204
    kept = answers["upload-b"].get_json()["id"]
    assert _missing_bytes(sessions, store, kept) == []
    assert purge_waited, "the purge must wait for the upload's blob locks"
    with sessions() as session:
        assert session.scalar(select(Blob).where(Blob.sha256.in_(select(Image.sha256)))) is not None


def test_an_upload_that_waited_for_a_purge_puts_the_bytes_back(
    app: Flask,
    client: FlaskClient,
    make_programme: Callable[[str], dict[str, str]],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    gate: Callable[[str, str], Gate],
) -> None:
    store: ObjectStore = app.extensions["retinaq"].store
    a, b = make_programme("A"), make_programme("B")
    photos = [fundus_jpeg(seed=n) for n in range(3)]
    doomed = client.post("/v1/batches", headers=a, data=_parts(photos)).get_json()
    shas = [img["sha256"] for img in _images(client, doomed, a)]

    # A has set the bytes aside and is about to delete the blob rows and commit.
    purge_paused = gate("DELETE FROM blobs", "purge-a")
    answers: dict[str, Any] = {}
    purge = _in_thread(
        "purge-a",
        lambda: app.test_client().delete(f"/v1/batches/{doomed['id']}?purge=true", headers=a),
        answers,
    )
    assert purge_paused.reached.wait(30), "the purge deletes blob rows under their locks"
    assert not any(store.exists(sha) for sha in shas), "bytes leave before the commit"
    upload = _in_thread(
        "upload-b",
        lambda: app.test_client().post("/v1/batches", headers=b, data=_parts(photos)),
        answers,
    )
    upload.join(1.5)
    upload_waited = upload.is_alive()
    purge_paused.release.set()
    purge.join(30)
    upload.join(30)

    assert answers["purge-a"].status_code == 204
    assert answers["upload-b"].status_code == 202
    assert upload_waited, "the upload must wait for the purge's blob locks"
    kept = answers["upload-b"].get_json()["id"]
    assert _missing_bytes(sessions, store, kept) == []
    assert temporaries(store) == [], "the purge emptied its trash on commit"


def test_uploads_and_purges_racing_freely_lose_no_accepted_image(
    app: Flask,
    client: FlaskClient,
    make_programme: Callable[[str], dict[str, str]],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
) -> None:
    """The issue's attack in small: B uploads A's photographs while A purges them."""
    store: ObjectStore = app.extensions["retinaq"].store
    a, b = make_programme("A"), make_programme("B")
    photos = [fundus_jpeg(seed=n, size=128) for n in range(24)]
    pace = random.Random(10)
    for trial in range(4):
        doomed = client.post("/v1/batches", headers=a, data=_parts(photos)).get_json()
        answers: dict[str, Any] = {}
        upload = _in_thread(
            f"upload-{trial}",
            lambda: app.test_client().post("/v1/batches", headers=b, data=_parts(photos)),
            answers,
        )
        threading.Event().wait(pace.uniform(0, 0.1))
        purge = client.delete(f"/v1/batches/{doomed['id']}?purge=true", headers=a)
        upload.join(60)
        assert purge.status_code == 204
        accepted = answers[f"upload-{trial}"]
        assert accepted.status_code == 202
        assert _missing_bytes(sessions, store, accepted.get_json()["id"]) == [], trial


def _images(client: FlaskClient, batch: dict[str, Any], headers: dict[str, str]) -> list[Any]:
    listing = client.get(f"/v1/batches/{batch['id']}/images", headers=headers).get_json()
    return list(listing["items"])
