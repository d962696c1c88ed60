"""Submitting batches over HTTP: multipart, open batches, metadata, limits, enqueueing, on
both stores (a folder, and a bucket on a real S3 server)."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.db.tables import Batch, BatchState, Image, ImageState
from common.storage import ObjectStore
from tests.support import STORES, stored_files, temporaries

pytestmark = pytest.mark.parametrize("storage", STORES, indirect=True)


def _files(fundus_jpeg: Callable[..., bytes], count: int, prefix: str = "img") -> list:
    return [(io.BytesIO(fundus_jpeg(seed=i)), f"{prefix}{i}.jpg") for i in range(count)]


def test_multipart_submission_records_stores_and_enqueues(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    store: ObjectStore,
    queued_tasks: Callable[[], list[list[str]]],
) -> None:
    response = client.post(
        "/v1/batches",
        headers=auth,
        data={"images": _files(fundus_jpeg, 10), "reference": "clinic-7"},
    )
    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    assert body["state"] == "queued"
    assert body["image_count"] == 10
    assert body["reference"] == "clinic-7"
    assert response.headers["Location"] == body["links"]["self"]
    assert body["links"]["self"].startswith("http://localhost/v1/batches/")
    assert set(body["links"]) == {"self", "results", "images", "patients"}

    with sessions() as session:
        images = session.scalars(select(Image).order_by(Image.id)).all()
    assert [i.filename for i in images] == [f"img{i}.jpg" for i in range(10)]
    assert all(i.state == ImageState.QUEUED for i in images)
    for image in images:
        assert store.read(image.storage_path) == fundus_jpeg(seed=int(image.filename[3:-4]))
        assert image.storage_path == store.relative_path(image.sha256)
    assert temporaries(store) == []

    tasks = queued_tasks()
    assert sorted(len(t) for t in tasks) == [2, 8]  # one task per task_size ids
    assert sorted(i for t in tasks for i in t) == sorted(str(i.id) for i in images)


def test_identical_bytes_are_stored_once(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    store: ObjectStore,
) -> None:
    same = fundus_jpeg(seed=3)
    for name in ("left.jpg", "copy.jpg"):
        client.post("/v1/batches", headers=auth, data={"images": [(io.BytesIO(same), name)]})
    assert len(stored_files(store)) == 1


def test_metadata_csv_is_applied(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
) -> None:
    metadata = "filename,patient_id,laterality\nimg0.jpg,P1,L\nimg1.jpg,P1,right\n"
    response = client.post(
        "/v1/batches",
        headers=auth,
        data={
            "images": _files(fundus_jpeg, 3),
            "metadata": (io.BytesIO(metadata.encode()), "meta.csv"),
        },
    )
    assert response.status_code == 202
    with sessions() as session:
        rows = session.execute(
            select(Image.filename, Image.patient_id, Image.laterality).order_by(Image.id)
        ).all()
    assert rows == [("img0.jpg", "P1", "L"), ("img1.jpg", "P1", "R"), ("img2.jpg", None, None)]


@pytest.mark.parametrize(
    ("csv_text", "code", "fragment"),
    [
        ("name,patient\nimg0.jpg,P1\n", "invalid_metadata", "line 1"),
        ("filename,patient_id,eye\nimg0.jpg,P1,L\n", "invalid_metadata", "unknown column"),
        ("filename,patient_id,laterality\nimg0.jpg,P1,X\n", "invalid_metadata", "line 2"),
        (
            "filename,patient_id,laterality\nimg0.jpg,P1,L\nimg0.jpg,P1,R\n",
            "invalid_metadata",
            "line 3",
        ),
        ("filename,patient_id\nimg0.jpg,P1,extra\n", "invalid_metadata", "line 2"),
        ("filename,patient_id\nghost.jpg,P1\n", "metadata_unmatched", "ghost.jpg"),
    ],
)
def test_malformed_metadata_is_422_with_the_line(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    csv_text: str,
    code: str,
    fragment: str,
) -> None:
    response = client.post(
        "/v1/batches",
        headers=auth,
        data={"images": _files(fundus_jpeg, 1), "metadata": csv_text},
    )
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == code
    assert fragment in error["message"]
    with sessions() as session:
        assert session.scalar(select(Batch.id)) is None


def test_open_batch_flow(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
) -> None:
    created = client.post("/v1/batches", headers=auth, json={"reference": "van-3", "open": True})
    assert created.status_code == 201
    batch = created.get_json()
    assert batch["state"] == "open"
    assert created.headers["Location"] == batch["links"]["self"]
    add_url = batch["links"]["add_images"]
    for chunk in range(2):
        added = client.post(
            add_url, headers=auth, data={"images": _files(fundus_jpeg, 3, f"c{chunk}-")}
        )
        assert added.status_code == 202
        assert added.get_json()["added"] == 3
    status = client.get(batch["links"]["self"], headers=auth).get_json()
    assert status["state"] == "open"
    assert status["image_count"] == 6
    closed = client.post(batch["links"]["close"], headers=auth)
    assert closed.status_code == 200
    assert closed.get_json()["state"] == "queued"
    assert client.post(batch["links"]["close"], headers=auth).status_code == 200
    late = client.post(add_url, headers=auth, data={"images": _files(fundus_jpeg, 1)})
    assert late.status_code == 409
    assert late.get_json()["error"]["code"] == "batch_closed"


def test_closing_an_empty_open_batch_completes_it(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    batch = client.post("/v1/batches", headers=auth, json={"open": True}).get_json()
    closed = client.post(batch["links"]["close"], headers=auth).get_json()
    assert closed["state"] == "completed"
    status = client.get(batch["links"]["self"], headers=auth)
    assert "Retry-After" not in status.headers


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"json": {"reference": "x"}}, 422, "open_required"),
        ({"json": {"open": True, "colour": "blue"}}, 422, "unknown_fields"),
        ({"data": "not json", "content_type": "application/json"}, 400, "invalid_json"),
        ({"data": "hello", "content_type": "text/plain"}, 415, "unsupported_media_type"),
        ({"data": {"reference": "x"}, "content_type": "multipart/form-data"}, 422, "no_images"),
        ({"json": {"open": True, "reference": "r" * 201}}, 422, "invalid_reference"),
    ],
)
def test_bad_submissions_get_specific_errors(
    client: FlaskClient, auth: dict[str, str], kwargs: dict, status: int, code: str
) -> None:
    response = client.post("/v1/batches", headers=auth, **kwargs)
    assert response.status_code == status
    assert response.get_json()["error"]["code"] == code


def test_too_many_files_is_413(
    make_app: Callable[..., Flask], auth: dict[str, str], fundus_jpeg: Callable[..., bytes]
) -> None:
    app = make_app(max_files_per_request=2)
    response = app.test_client().post(
        "/v1/batches", headers=auth, data={"images": _files(fundus_jpeg, 3)}
    )
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "too_many_files"


def test_request_over_the_size_limit_is_413_and_leaves_no_files(
    make_app: Callable[..., Flask], auth: dict[str, str], fundus_jpeg: Callable[..., bytes]
) -> None:
    app = make_app(max_request_bytes=4096)
    response = app.test_client().post(
        "/v1/batches", headers=auth, data={"images": _files(fundus_jpeg, 2)}
    )
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "payload_too_large"
    assert stored_files(app.extensions["retinaq"].store) == []


def test_hostile_filenames_are_reduced_to_safe_display_names(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
) -> None:
    names = ["../../etc/passwd", "/abs/path/eye.jpg", "nul\x00byte.jpg", "x" * 300 + ".jpg"]
    files = [(io.BytesIO(fundus_jpeg(seed=i)), n) for i, n in enumerate(names)]
    response = client.post("/v1/batches", headers=auth, data={"images": files})
    assert response.status_code == 202
    with sessions() as session:
        stored = session.scalars(select(Image.filename).order_by(Image.id)).all()
    assert stored[0] == "etc/passwd"  # the relative path, without its ".." segments
    assert stored[1] == "abs/path/eye.jpg"
    assert "\x00" not in stored[2]
    assert len(stored[3]) == 255


def test_batch_rows_track_state(
    client: FlaskClient, auth: dict[str, str], fundus_jpeg, sessions: sessionmaker[Session]
) -> None:
    client.post("/v1/batches", headers=auth, data={"images": _files(fundus_jpeg, 2)})
    with sessions() as session:
        batch = session.scalars(select(Batch)).one()
    assert batch.state == BatchState.QUEUED
    assert batch.closed_at is not None
    assert batch.image_count == 2
