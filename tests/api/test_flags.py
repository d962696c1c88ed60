"""Yes/no text values: one vocabulary for every form field and query parameter."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from flask.testing import FlaskClient

from api.flags import parse_flag


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        (" yes ", True),
        ("1", True),
        ("false", False),
        ("No", False),
        ("0", False),
        ("", False),
    ],
)
def test_yes_no_values(raw: str, expected: bool) -> None:
    assert parse_flag(raw) is expected


@pytest.mark.parametrize("raw", ["maybe", "2", "on", "tru", "\x00"])
def test_anything_else_is_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_flag(raw)


def test_purge_and_explain_accept_the_same_words(
    client: FlaskClient, auth: dict[str, str], fundus_jpeg: Callable[..., bytes]
) -> None:
    def submit(explain: str) -> tuple[int, dict]:
        parts = {"images": [(io.BytesIO(fundus_jpeg()), "eye.jpg")], "explain": explain}
        response = client.post("/v1/batches", headers=auth, data=parts)
        return response.status_code, response.get_json()

    status, batch = submit("yes")
    assert (status, batch["explain"]) == (202, True)
    assert client.delete(f"/v1/batches/{batch['id']}?purge=yes", headers=auth).status_code == 204

    status, refused = submit("maybe")
    assert (status, refused["error"]["code"]) == (422, "invalid_explain")
    status, other = submit("no")
    refused_purge = client.delete(f"/v1/batches/{other['id']}?purge=maybe", headers=auth)
    assert refused_purge.status_code == 400
    assert refused_purge.get_json()["error"]["code"] == "invalid_purge"
