"""Authentication, programme isolation and the JSON error shape, over HTTP."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable

from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from common.access.apikeys import revoke_api_key


def _error(response) -> dict:  # type: ignore[no-untyped-def]
    assert response.is_json, response.data
    return response.get_json()["error"]


def test_missing_key_is_401_json(client: FlaskClient) -> None:
    response = client.get("/v1/batches")
    assert response.status_code == 401
    assert _error(response)["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_wrong_scheme_and_unknown_key_are_401(client: FlaskClient) -> None:
    assert client.get("/v1/batches", headers={"Authorization": "Basic abc"}).status_code == 401
    response = client.get("/v1/batches", headers={"Authorization": "Bearer rq_nope"})
    assert response.status_code == 401
    assert _error(response)["code"] == "invalid_api_key"


def test_revoked_key_stops_working(
    client: FlaskClient, auth: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    assert client.get("/v1/batches", headers=auth).status_code == 200
    prefix = auth["Authorization"].removeprefix("Bearer ")[:11]
    with sessions.begin() as session:
        assert revoke_api_key(session, prefix)
    assert client.get("/v1/batches", headers=auth).status_code == 401


def test_health_needs_no_key(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}


def test_readyz_reports_both_dependencies(client: FlaskClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json()["checks"] == {"database": "ok", "broker": "ok"}


def test_unknown_route_and_method_are_json(client: FlaskClient, auth: dict[str, str]) -> None:
    response = client.get("/v1/nothing-here", headers=auth)
    assert response.status_code == 404
    assert _error(response)["code"] == "not_found"
    response = client.delete("/v1/batches", headers=auth)
    assert response.status_code == 405
    assert _error(response)["code"] == "method_not_allowed"


def test_other_programmes_data_is_404_indistinguishable(
    client: FlaskClient,
    make_programme: Callable[[str], dict[str, str]],
    fundus_jpeg: Callable[..., bytes],
) -> None:
    north = make_programme("North")
    south = make_programme("South")
    created = client.post(
        "/v1/batches",
        headers=north,
        data={"images": [(io.BytesIO(fundus_jpeg()), "a.jpg")]},
    )
    batch_id = created.get_json()["id"]
    image_id = client.get(f"/v1/batches/{batch_id}/results", headers=north).get_json()["items"][0][
        "image_id"
    ]
    missing = uuid.uuid4()
    for path in (
        f"/v1/batches/{batch_id}",
        f"/v1/batches/{batch_id}/results",
        f"/v1/batches/{batch_id}/images",
        f"/v1/images/{image_id}",
    ):
        foreign = client.get(path, headers=south)
        nonexistent = client.get(
            path.replace(str(batch_id), str(missing)).replace(str(image_id), str(missing)),
            headers=south,
        )
        assert foreign.status_code == nonexistent.status_code == 404
        assert foreign.get_json() == nonexistent.get_json()
    assert client.post(f"/v1/batches/{batch_id}/close", headers=south).status_code == 404
    assert client.get("/v1/batches", headers=south).get_json()["items"] == []
    assert len(client.get("/v1/batches", headers=north).get_json()["items"]) == 1
