"""Programme isolation over every ``/v1`` endpoint, and keys that must not work."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from common.access.apikeys import revoke_api_key
from common.db.tables import ApiKey, utcnow

MISSING = uuid.UUID("01900000-0000-7000-8000-000000000000")


def _image(fundus_jpeg: Callable[..., bytes], seed: int = 0) -> dict[str, Any]:
    return {"images": [(io.BytesIO(fundus_jpeg(seed=seed)), f"eye{seed}.jpg")]}


@pytest.fixture
def north_data(
    client: FlaskClient,
    make_programme: Callable[[str], dict[str, str]],
    fundus_jpeg: Callable[..., bytes],
) -> dict[str, Any]:
    """North's open batch with one image, and a closed batch, as seen by North."""
    north = make_programme("North")
    open_batch = client.post("/v1/batches", headers=north, json={"open": True}).get_json()
    client.post(open_batch["links"]["add_images"], headers=north, data=_image(fundus_jpeg))
    closed = client.post("/v1/batches", headers=north, data=_image(fundus_jpeg, 1)).get_json()
    image_id = client.get(open_batch["links"]["results"], headers=north).get_json()["items"][0][
        "image_id"
    ]
    return {"auth": north, "batch": open_batch["id"], "closed": closed["id"], "image": image_id}


def _requests(
    batch_id: uuid.UUID | str, image_id: uuid.UUID | str, fundus_jpeg: Callable[..., bytes]
) -> list[tuple[str, str, dict[str, Any]]]:
    """Every ``/v1`` endpoint that names an object, aimed at the given ids."""
    return [
        ("GET", f"/v1/batches/{batch_id}", {}),
        ("GET", f"/v1/batches/{batch_id}/results", {}),
        ("GET", f"/v1/batches/{batch_id}/images", {}),
        ("GET", f"/v1/images/{image_id}", {}),
        ("POST", f"/v1/batches/{batch_id}/images", {"data": _image(fundus_jpeg, 7)}),
        ("POST", f"/v1/batches/{batch_id}/close", {}),
        ("DELETE", f"/v1/batches/{batch_id}", {}),
        ("DELETE", f"/v1/batches/{batch_id}?purge=true", {}),
    ]


def test_another_programmes_ids_are_indistinguishable_from_missing_ones(
    client: FlaskClient,
    make_programme: Callable[[str], dict[str, str]],
    fundus_jpeg: Callable[..., bytes],
    north_data: dict[str, Any],
) -> None:
    south = make_programme("South")
    foreign = _requests(north_data["batch"], north_data["image"], fundus_jpeg)
    missing = _requests(MISSING, MISSING, fundus_jpeg)
    for (method, path, kwargs), (_, missing_path, missing_kwargs) in zip(
        foreign, missing, strict=True
    ):
        theirs = client.open(path, method=method, headers=south, **kwargs)
        nobody = client.open(missing_path, method=method, headers=south, **missing_kwargs)
        assert theirs.status_code == nobody.status_code == 404, path
        assert (
            theirs.get_json()
            == nobody.get_json()
            == {"error": {"code": "not_found", "message": theirs.get_json()["error"]["message"]}}
        )
        assert set(theirs.headers.keys()) == set(nobody.headers.keys()), path
    for closed_path in (f"/v1/batches/{north_data['closed']}", f"/v1/batches/{MISSING}"):
        assert client.get(closed_path, headers=south).status_code == 404

    assert client.get("/v1/batches", headers=south).get_json()["items"] == []
    north_view = client.get(f"/v1/batches/{north_data['batch']}", headers=north_data["auth"])
    assert north_view.get_json()["state"] == "open"
    assert north_view.get_json()["image_count"] == 1
    listed = client.get("/v1/batches", headers=north_data["auth"]).get_json()["items"]
    assert {b["id"] for b in listed} == {north_data["batch"], north_data["closed"]}


def _all_endpoints(
    north_data: dict[str, Any], fundus_jpeg: Callable[..., bytes]
) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("GET", "/v1/batches", {}),
        ("POST", "/v1/batches", {"json": {"open": True}}),
        ("POST", "/v1/batches", {"data": _image(fundus_jpeg, 3)}),
        *_requests(north_data["batch"], north_data["image"], fundus_jpeg),
    ]


def _assert_every_endpoint_refuses(
    client: FlaskClient,
    headers: dict[str, str],
    north_data: dict[str, Any],
    fundus_jpeg: Callable[..., bytes],
) -> None:
    for method, path, kwargs in _all_endpoints(north_data, fundus_jpeg):
        response = client.open(path, method=method, headers=headers, **kwargs)
        assert response.status_code == 401, (method, path)
        error = response.get_json()["error"]
        assert error["code"] == "invalid_api_key"
        assert error["message"] == "the API key is unknown, revoked or expired"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def _prefix(auth: dict[str, str]) -> str:
    return auth["Authorization"].removeprefix("Bearer ")[:11]


def test_a_wrong_key_is_401_everywhere(
    client: FlaskClient, north_data: dict[str, Any], fundus_jpeg: Callable[..., bytes]
) -> None:
    secret = north_data["auth"]["Authorization"].removeprefix("Bearer ")
    for wrong in ("rq_" + "A" * 43, secret[:-1] + ("B" if secret[-1] != "B" else "C")):
        _assert_every_endpoint_refuses(
            client, {"Authorization": f"Bearer {wrong}"}, north_data, fundus_jpeg
        )


def test_a_revoked_key_is_401_everywhere(
    client: FlaskClient,
    north_data: dict[str, Any],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        assert revoke_api_key(session, _prefix(north_data["auth"]))
    _assert_every_endpoint_refuses(client, north_data["auth"], north_data, fundus_jpeg)


def test_an_expired_key_is_401_everywhere_and_a_future_expiry_still_works(
    client: FlaskClient,
    north_data: dict[str, Any],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
) -> None:
    def expire_in(delta: timedelta) -> None:
        with sessions.begin() as session:
            session.execute(
                update(ApiKey)
                .where(ApiKey.prefix == _prefix(north_data["auth"]))
                .values(expires_at=utcnow() + delta)
            )

    expire_in(timedelta(minutes=5))
    assert client.get("/v1/batches", headers=north_data["auth"]).status_code == 200
    expire_in(timedelta(seconds=-1))
    _assert_every_endpoint_refuses(client, north_data["auth"], north_data, fundus_jpeg)
