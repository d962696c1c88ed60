"""Sealed pagination cursors: opaque, tamper-evident, valid only where they were issued."""

from __future__ import annotations

import base64
import io
import stat
import string
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from pydantic import SecretStr
from sqlalchemy.orm import Session

from api import create_app
from api.cursors import (
    SECRET_KEY_FILE,
    CursorSealer,
    InvalidCursor,
    SecretKeyError,
    cursor_sealer,
    embedded_secret,
)
from common.access.apikeys import create_programme
from common.db.engine import make_engine
from common.db.schema import upgrade_to_head
from common.settings import Settings

LISTING = "v1.batches.list_patients"
BATCH = uuid.UUID("01900000-0000-7000-8000-000000000001")


@pytest.fixture
def sealer() -> CursorSealer:
    """A sealer on a fixed test secret."""
    return CursorSealer(b"unit-test-secret-of-some-length")


def _flip(cursor: str, index: int) -> str:
    """The cursor with one base64 character changed."""
    swapped = "A" if cursor[index] != "A" else "B"
    return cursor[:index] + swapped + cursor[index + 1 :]


def _cursor(url: str) -> str:
    return parse_qs(urlsplit(url).query)["cursor"][0]


# --- the sealer itself ---------------------------------------------------------------------


@pytest.mark.parametrize("position", [b"PAT-0001", "Zoë Ø-17".encode(), uuid.uuid4().bytes])
def test_round_trip(sealer: CursorSealer, position: bytes) -> None:
    cursor = sealer.seal(position, LISTING, BATCH)
    assert sealer.open(cursor, LISTING, BATCH) == position


def test_cursor_is_opaque_and_hides_the_length(sealer: CursorSealer) -> None:
    # A patient id long enough that a random cursor never contains it by chance.
    patient = b"MRN-555-0001"
    short, long = sealer.seal(patient, LISTING, BATCH), sealer.seal(b"P" * 29, LISTING, BATCH)
    assert len(short) == len(long)
    plain = base64.urlsafe_b64encode(patient).decode().rstrip("=")
    assert patient.decode() not in short and plain not in short
    assert sealer.seal(patient, LISTING, BATCH) != short, "a fresh nonce every time"


def test_tampered_or_truncated_cursor_is_refused(sealer: CursorSealer) -> None:
    cursor = sealer.seal(b"PAT-0001", LISTING, BATCH)
    for index in range(len(cursor)):
        # Every other character at every place, including the last one's spare bits.
        for other in set(string.ascii_letters + string.digits + "-_") - {cursor[index]}:
            with pytest.raises(InvalidCursor):
                sealer.open(cursor[:index] + other + cursor[index + 1 :], LISTING, BATCH)
    for inserted in ("=", "==", " ", "\n", "+", "/", "!"):
        with pytest.raises(InvalidCursor):
            sealer.open(cursor[:5] + inserted + cursor[5:], LISTING, BATCH)
    for end in (0, 1, 20, len(cursor) - 1):
        with pytest.raises(InvalidCursor):
            sealer.open(cursor[:end], LISTING, BATCH)
    for junk in ("%%%", "A" * 1000, base64.urlsafe_b64encode(b"PAT-0001").decode()):
        with pytest.raises(InvalidCursor):
            sealer.open(junk, LISTING, BATCH)


def test_cursor_is_bound_to_its_listing_and_batch(sealer: CursorSealer) -> None:
    cursor = sealer.seal(b"PAT-0001", LISTING, BATCH)
    with pytest.raises(InvalidCursor):
        sealer.open(cursor, "v1.batches.list_results", BATCH)
    with pytest.raises(InvalidCursor):
        sealer.open(cursor, LISTING, uuid.uuid4())
    with pytest.raises(InvalidCursor):
        sealer.open(cursor, LISTING, None)


def test_another_key_cannot_open_it(sealer: CursorSealer) -> None:
    cursor = sealer.seal(b"PAT-0001", LISTING, BATCH)
    with pytest.raises(InvalidCursor):
        CursorSealer(b"a-rotated-secret-of-some-length").open(cursor, LISTING, BATCH)
    assert CursorSealer(b"unit-test-secret-of-some-length").open(cursor, LISTING, BATCH)


# --- where the key comes from --------------------------------------------------------------


def test_configured_secret_is_shared_by_processes(tmp_path: Path) -> None:
    settings = Settings(
        var_dir=tmp_path, database_url="postgresql+psycopg://x@h/db", secret_key="s" * 32
    )
    cursor = cursor_sealer(settings).seal(b"PAT", LISTING)
    assert cursor_sealer(settings).open(cursor, LISTING) == b"PAT"
    assert not (tmp_path / SECRET_KEY_FILE).exists(), "a configured secret writes no file"


def test_production_without_a_secret_fails_fast(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path, database_url="postgresql+psycopg://x@h/db")
    with pytest.raises(SecretKeyError, match="RETINAQ_SECRET_KEY is not set"):
        cursor_sealer(settings)
    short = settings.model_copy(update={"secret_key": SecretStr("short")})
    with pytest.raises(SecretKeyError, match="at least 16"):
        cursor_sealer(short)


def test_api_refuses_to_start_in_production_without_a_secret(settings: Settings) -> None:
    with pytest.raises(SecretKeyError, match="RETINAQ_SECRET_KEY"):
        create_app(settings.model_copy(update={"secret_key": None}))


def test_embedded_secret_is_created_once_private_and_agreed(tmp_path: Path) -> None:
    var = tmp_path / "var"
    found: list[str] = []
    start = threading.Barrier(8)

    def read() -> None:
        start.wait()
        found.append(embedded_secret(var))

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(found) == 8 and len(set(found)) == 1, "every process agrees on one secret"
    path = var / SECRET_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in var.iterdir()) == [SECRET_KEY_FILE], "no temporary left"
    assert embedded_secret(var) == found[0]


def _embedded_app(var: Path) -> Flask:
    app = create_app(Settings(var_dir=var))
    app.config["TESTING"] = True
    return app


def test_embedded_api_processes_share_the_generated_key(
    tmp_path: Path, fundus_jpeg: Callable[..., bytes]
) -> None:
    settings = Settings(var_dir=tmp_path)
    tmp_path.mkdir(exist_ok=True)
    upgrade_to_head(settings.database_url, quiet=True)
    engine = make_engine(settings.database_url)
    with Session(engine) as session, session.begin():
        _, key = create_programme(session, "Embedded")
    engine.dispose()
    auth = {"Authorization": f"Bearer {key.secret}"}
    first, second = _embedded_app(tmp_path), _embedded_app(tmp_path)
    try:
        for _ in range(2):
            first.test_client().post("/v1/batches", headers=auth, json={"open": True})
        page = first.test_client().get("/v1/batches?limit=1", headers=auth).get_json()
        following = second.test_client().get(page["links"]["next"], headers=auth)
        assert following.status_code == 200, following.get_json()
        assert following.get_json()["items"][0]["id"] != page["items"][0]["id"]
    finally:
        for app in (first, second):
            app.extensions["retinaq"].engine.dispose()


# --- over HTTP -----------------------------------------------------------------------------


def _submit(client: FlaskClient, auth: dict[str, str], jpeg: Callable[..., bytes]) -> dict:
    files = [(io.BytesIO(jpeg(seed=900 + i)), f"scan-{i}.jpg") for i in range(3)]
    metadata = "filename,patient_id\nscan-0.jpg,MRN-555-0001\nscan-1.jpg,MRN-555-0002\n"
    response = client.post(
        "/v1/batches", headers=auth, data={"images": files, "metadata": metadata}
    )
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def _invalid(client: FlaskClient, url: str, auth: dict[str, str]) -> None:
    response = client.get(url, headers=auth)
    assert response.status_code == 400, (url, response.get_json())
    assert response.get_json()["error"]["code"] == "invalid_cursor"


def test_patient_cursor_reveals_no_patient_id(
    client: FlaskClient, auth: dict[str, str], fundus_jpeg: Callable[..., bytes]
) -> None:
    batch = _submit(client, auth, fundus_jpeg)
    first = client.get(batch["links"]["patients"] + "?limit=1", headers=auth).get_json()
    assert [row["patient_id"] for row in first["items"]] == ["MRN-555-0001"]
    cursor = _cursor(first["links"]["next"])
    for form in ("MRN-555-0001", base64.urlsafe_b64encode(b"MRN-555-0001").decode().rstrip("=")):
        assert form not in first["links"]["next"]
    second = client.get(first["links"]["next"], headers=auth).get_json()
    assert [row["patient_id"] for row in second["items"]] == ["MRN-555-0002"]
    # The cursor format before sealing (base64url of the patient id) is refused.
    plain = base64.urlsafe_b64encode(b"MRN-555-0001").decode().rstrip("=")
    _invalid(client, f"{batch['links']['patients']}?cursor={plain}", auth)
    _invalid(client, f"{batch['links']['patients']}?cursor={_flip(cursor, 10)}", auth)
    _invalid(client, f"{batch['links']['patients']}?cursor={cursor[:-4]}", auth)


def test_a_cursor_works_only_on_the_listing_and_batch_that_issued_it(
    client: FlaskClient, auth: dict[str, str], fundus_jpeg: Callable[..., bytes]
) -> None:
    one, two = _submit(client, auth, fundus_jpeg), _submit(client, auth, fundus_jpeg)
    cursors = {
        "results": _cursor(
            client.get(one["links"]["results"] + "?limit=1", headers=auth).get_json()["links"][
                "next"
            ]
        ),
        "images": _cursor(
            client.get(one["links"]["images"] + "?limit=1", headers=auth).get_json()["links"][
                "next"
            ]
        ),
        "patients": _cursor(
            client.get(one["links"]["patients"] + "?limit=1", headers=auth).get_json()["links"][
                "next"
            ]
        ),
        "batches": _cursor(
            client.get("/v1/batches?limit=1", headers=auth).get_json()["links"]["next"]
        ),
    }
    listings = {
        "results": one["links"]["results"],
        "images": one["links"]["images"],
        "patients": one["links"]["patients"],
        "batches": "/v1/batches",
    }
    for issued_by, cursor in cursors.items():
        for listing, url in listings.items():
            response = client.get(f"{url}?limit=1&cursor={cursor}", headers=auth)
            if listing == issued_by:
                assert response.status_code == 200, (issued_by, response.get_json())
            else:
                _invalid(client, f"{url}?limit=1&cursor={cursor}", auth)
    for listing in ("results", "images", "patients"):
        _invalid(client, f"{two['links'][listing]}?cursor={cursors[listing]}", auth)


def test_another_programme_cannot_replay_a_batches_cursor(
    client: FlaskClient,
    auth: dict[str, str],
    make_programme: Callable[[str], dict[str, str]],
    fundus_jpeg: Callable[..., bytes],
) -> None:
    other = make_programme("South")
    for headers in (auth, auth, other, other):
        _submit(client, headers, fundus_jpeg)
    mine = client.get("/v1/batches?limit=1", headers=auth).get_json()["links"]["next"]
    assert client.get(mine, headers=auth).status_code == 200
    _invalid(client, f"/v1/batches?limit=1&cursor={_cursor(mine)}", other)


def test_rotating_the_secret_invalidates_cursors(
    make_app: Callable[..., Flask], auth: dict[str, str], fundus_jpeg: Callable[..., bytes]
) -> None:
    before = make_app().test_client()
    batch = _submit(before, auth, fundus_jpeg)
    page = before.get(batch["links"]["results"] + "?limit=1", headers=auth).get_json()
    assert before.get(page["links"]["next"], headers=auth).status_code == 200
    after = make_app(secret_key=SecretStr("a-rotated-secret-key-for-tests")).test_client()
    _invalid(after, page["links"]["next"], auth)
