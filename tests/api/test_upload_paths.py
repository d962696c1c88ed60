"""Uploads keep the client's relative path, so metadata lands on the right patient.

Folder-per-patient trees (``P001/left.jpg``, ``P002/left.jpg``) repeat bare names; a row
that could mean two photographs is refused rather than guessed. Also: patient ids with
control characters, and a part whose filename is not UTF-8, are refused, never dropped.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from common.db.tables import Batch, Image
from common.settings import Settings

HEADER = "filename,patient_id,laterality\n"


def _post(
    client: FlaskClient,
    auth: dict[str, str],
    jpeg: Callable[..., bytes],
    names: list[str],
    metadata: str,
) -> Any:
    files = [(io.BytesIO(jpeg(seed=300 + i)), name) for i, name in enumerate(names)]
    return client.post(
        "/v1/batches",
        headers=auth,
        data={"images": files, "metadata": (io.BytesIO(metadata.encode()), "metadata.csv")},
    )


def _nothing_kept(settings: Settings, sessions: sessionmaker[Session]) -> None:
    assert [p for p in settings.image_store.rglob("*") if p.is_file()] == []
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Batch)) == 0


def test_two_left_jpgs_in_patient_folders_each_get_their_own_patient(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
) -> None:
    metadata = HEADER + "P001/left.jpg,P001,L\nP002/left.jpg,P002,L\n"
    created = _post(client, auth, fundus_jpeg, ["P001/left.jpg", "P002/left.jpg"], metadata)
    assert created.status_code == 202, created.get_json()
    batch = created.get_json()

    images = client.get(batch["links"]["images"], headers=auth).get_json()["items"]
    by_name = {item["filename"]: item for item in images}
    assert set(by_name) == {"P001/left.jpg", "P002/left.jpg"}
    assert by_name["P001/left.jpg"]["patient_id"] == "P001"
    assert by_name["P002/left.jpg"]["patient_id"] == "P002"

    patients = client.get(batch["links"]["patients"], headers=auth).get_json()["items"]
    assert [p["patient_id"] for p in patients] == ["P001", "P002"]
    for patient in patients:
        (image_url,) = patient["eyes"]["L"]["images"]
        assert image_url.endswith(by_name[f"{patient['patient_id']}/left.jpg"]["id"])


def test_a_bare_name_row_matches_the_only_file_with_that_name(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
) -> None:
    metadata = HEADER + "left.jpg,P001,L\n"
    created = _post(client, auth, fundus_jpeg, ["P001/left.jpg", "P001/right.jpg"], metadata)
    assert created.status_code == 202, created.get_json()
    with sessions() as session:
        rows = dict(session.execute(select(Image.filename, Image.patient_id)).all())
    assert rows == {"P001/left.jpg": "P001", "P001/right.jpg": None}


@pytest.mark.parametrize(
    ("names", "metadata", "named"),
    [
        (["P001/left.jpg", "P002/left.jpg"], "left.jpg,P001,L\n", "P001/left.jpg, P002/left.jpg"),
        (["left.jpg", "left.jpg"], "left.jpg,P001,L\n", "left.jpg, left.jpg"),
        (["P001/left.jpg"], "P001/left.jpg,P001,L\nleft.jpg,P009,L\n", "'P001/left.jpg'"),
    ],
    ids=["bare-name-two-folders", "same-path-twice", "two-rows-one-file"],
)
def test_a_row_that_could_mean_two_photographs_is_422_naming_them(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    settings: Settings,
    sessions: sessionmaker[Session],
    names: list[str],
    metadata: str,
    named: str,
) -> None:
    refused = _post(client, auth, fundus_jpeg, names, HEADER + metadata)
    assert refused.status_code == 422
    error = refused.get_json()["error"]
    assert error["code"] == "metadata_ambiguous"
    assert named in error["message"]
    _nothing_kept(settings, sessions)


@pytest.mark.parametrize("control", ["\x00", "\x1b", "\x7f", "\t"])
def test_a_patient_id_with_control_characters_is_422_naming_the_line(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    settings: Settings,
    sessions: sessionmaker[Session],
    control: str,
) -> None:
    metadata = HEADER + "a.jpg,P001,L\n" + f"b.jpg,P{control}002,R\n"
    refused = _post(client, auth, fundus_jpeg, ["a.jpg", "b.jpg"], metadata)
    assert refused.status_code == 422
    error = refused.get_json()["error"]
    assert error["code"] == "invalid_metadata"
    assert error["message"].startswith("line 3:")
    assert "control characters" in error["message"]
    _nothing_kept(settings, sessions)


def _raw_part(name: bytes, filename: bytes, data: bytes) -> bytes:
    return (
        b"--bnd\r\n"
        b'Content-Disposition: form-data; name="' + name + b'"; filename="' + filename + b'"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
    )


@pytest.mark.parametrize("field", [b"images", b"metadata"])
def test_a_part_whose_filename_is_not_utf8_is_refused_naming_it(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    settings: Settings,
    sessions: sessionmaker[Session],
    field: bytes,
) -> None:
    body = (
        _raw_part(b"images", b"good.jpg", fundus_jpeg(seed=1))
        + _raw_part(field, b"\xff\xfe.jpg", b"filename\n" if field == b"metadata" else b"x")
        + b"--bnd--\r\n"
    )
    refused = client.post(
        "/v1/batches", headers=auth, data=body, content_type="multipart/form-data; boundary=bnd"
    )
    assert refused.status_code == 400
    error = refused.get_json()["error"]
    assert error["code"] == "invalid_multipart"
    assert f'name="{field.decode()}"; filename="\\xff\\xfe.jpg"' in error["message"]
    _nothing_kept(settings, sessions)

    fine = _post(client, auth, fundus_jpeg, ["good.jpg"], HEADER + "good.jpg,P1,L\n")
    assert fine.status_code == 202
