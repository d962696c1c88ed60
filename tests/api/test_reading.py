"""Reading batches back: status with counts, keyset pagination, image detail, listings."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from flask.testing import FlaskClient


@pytest.fixture
def batch(client: FlaskClient, auth: dict[str, str], fundus_jpeg: Callable[..., bytes]) -> dict:
    files = [(io.BytesIO(fundus_jpeg(seed=i)), f"eye{i}.jpg") for i in range(5)]
    return client.post("/v1/batches", headers=auth, data={"images": files}).get_json()


def test_status_counts_and_retry_after(
    client: FlaskClient, auth: dict[str, str], batch: dict
) -> None:
    response = client.get(batch["links"]["self"], headers=auth)
    assert response.status_code == 200
    body = response.get_json()
    assert body["state"] == "queued"
    assert body["counts"] == {
        "queued": 5,
        "processing": 0,
        "graded": 0,
        "ungradable": 0,
        "failed": 0,
        "cancelled": 0,
    }
    assert body["grades"] == {"0": 0, "1": 0, "2": 0, "3": 0, "4": 0}
    assert body["referable_count"] == 0
    assert int(response.headers["Retry-After"]) >= 1


@pytest.mark.parametrize("listing", ["results", "images"])
def test_keyset_pagination_follows_next_links_in_submission_order(
    client: FlaskClient, auth: dict[str, str], batch: dict, listing: str
) -> None:
    url = batch["links"][listing] + "?limit=2"
    seen: list[str] = []
    pages = 0
    while url:
        page = client.get(url, headers=auth).get_json()
        seen.extend(item["filename"] for item in page["items"])
        assert page["links"]["self"].startswith("http://localhost/v1/batches/")
        url = page["links"].get("next")
        pages += 1
    assert pages == 3
    assert seen == [f"eye{i}.jpg" for i in range(5)]


def test_results_rows_before_grading_have_state_and_no_grade(
    client: FlaskClient, auth: dict[str, str], batch: dict
) -> None:
    row = client.get(batch["links"]["results"], headers=auth).get_json()["items"][0]
    assert row["state"] == "queued"
    assert row["grade"] is None
    assert row["error"] is None
    detail = client.get(row["links"]["image"], headers=auth).get_json()
    assert detail["id"] == row["image_id"]
    assert detail["result"] is None
    assert detail["links"]["batch"] == batch["links"]["self"]


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("cursor=not-a-cursor!!", "invalid_cursor"),
        ("cursor=AAAA", "invalid_cursor"),
        ("limit=0", "invalid_limit"),
        ("limit=100000", "invalid_limit"),
        ("limit=ten", "invalid_limit"),
    ],
)
def test_bad_pagination_parameters_are_400(
    client: FlaskClient, auth: dict[str, str], batch: dict, query: str, code: str
) -> None:
    for url in (batch["links"]["results"], "/v1/batches"):
        response = client.get(f"{url}?{query}", headers=auth)
        assert response.status_code == 400
        assert response.get_json()["error"]["code"] == code


def test_batch_listing_paginates(
    client: FlaskClient, auth: dict[str, str], fundus_jpeg: Callable[..., bytes]
) -> None:
    for i in range(3):
        client.post("/v1/batches", headers=auth, json={"open": True, "reference": f"r{i}"})
    first = client.get("/v1/batches?limit=2", headers=auth).get_json()
    assert [b["reference"] for b in first["items"]] == ["r0", "r1"]
    second = client.get(first["links"]["next"], headers=auth).get_json()
    assert [b["reference"] for b in second["items"]] == ["r2"]
    assert "next" not in second["links"]


def test_ids_in_urls_must_be_uuids(client: FlaskClient, auth: dict[str, str]) -> None:
    response = client.get("/v1/batches/123", headers=auth)
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"
