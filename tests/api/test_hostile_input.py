"""Hostile input on every route: a specific 4xx in the JSON error shape, never a 500.

Each refused request must also leave nothing behind: no spooled file in the image store,
no stored file, and no row (batch, image, result, idempotency key, audit event).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import encode_multipart

from api.errors import echo_client_values
from common.db.tables import AuditEvent, Batch, IdempotencyKey, Image, Result
from common.settings import Settings

MiB = 1024 * 1024
Request = Callable[[bytes], dict[str, Any]]  # built per test: some bodies are large


def _images(jpeg: bytes, **fields: Any) -> dict[str, Any]:
    # Encoded in memory: the test client spills large bodies to a file it never closes.
    form = MultiDict([("images", FileStorage(io.BytesIO(jpeg), "eye.jpg"))])
    for name, value in fields.items():
        form.setlist(name, value if isinstance(value, list) else [value])
    boundary, body = encode_multipart(form)
    return {"data": body, "content_type": f"multipart/form-data; boundary={boundary}"}


def _json(text: str | bytes, **extra: Any) -> dict[str, Any]:
    return {"data": text, "content_type": "application/json", **extra}


BATCHES = "/v1/batches"
OPEN = "/v1/batches/{batch}"  # an open batch of the caller's
DEEP = "[" * 30_000 + "]" * 30_000  # within the size limit, far past the parser's recursion


def case(name: str, status: int, code: str, method: str, path: str, build: Request) -> Any:
    """One hostile request and the refusal it must get."""
    return pytest.param(method, path, build, status, code, id=name)


def nothing(_jpeg: bytes) -> dict[str, Any]:
    """No body, no extra header: the hostility is in the URL."""
    return {}


CASES = [
    # parts the API does not know, or a second metadata part, used to be dropped silently
    case(
        "misspelt-part",
        422,
        "unknown_fields",
        "POST",
        BATCHES,
        lambda j: _images(j, image="a photograph under the wrong name"),
    ),
    case(
        "two-metadata-parts",
        422,
        "duplicate_field",
        "POST",
        BATCHES,
        lambda j: _images(j, metadata=["filename\neye.jpg\n", "filename\neye.jpg\n"]),
    ),
    # two Idempotency-Key headers arrive joined by a comma and used to pass as a third key
    case(
        "idempotency-key-twice",
        400,
        "invalid_idempotency_key",
        "POST",
        BATCHES,
        lambda j: {"json": {"open": True}, "headers": {"Idempotency-Key": "q1,q2"}},
    ),
    # reference: NUL used to reach PostgreSQL and answer 500
    case(
        "ref-nul-form",
        422,
        "invalid_reference",
        "POST",
        BATCHES,
        lambda j: _images(j, reference="a\x00b"),
    ),
    case(
        "ref-bell-form",
        422,
        "invalid_reference",
        "POST",
        BATCHES,
        lambda j: _images(j, reference="\x07"),
    ),
    case(
        "ref-nul-json",
        422,
        "invalid_reference",
        "POST",
        BATCHES,
        lambda j: _json('{"open": true, "reference": "a\\u0000"}'),
    ),
    case(
        "ref-del-json",
        422,
        "invalid_reference",
        "POST",
        BATCHES,
        lambda j: _json('{"open": true, "reference": "\\u007f"}'),
    ),
    case(
        "ref-surrogate",
        422,
        "invalid_reference",
        "POST",
        BATCHES,
        lambda j: _json('{"open": true, "reference": "\\ud800"}'),
    ),
    case(
        "ref-10mb-field",
        422,
        "invalid_reference",
        "POST",
        BATCHES,
        lambda j: _images(j, reference="r" * (10 * MiB)),
    ),
    # a field that means one thing may be sent once
    case(
        "ref-1000-times",
        422,
        "duplicate_field",
        "POST",
        BATCHES,
        lambda j: _images(j, reference=["r"] * 1000),
    ),
    case(
        "explain-twice",
        422,
        "duplicate_field",
        "POST",
        BATCHES,
        lambda j: _images(j, explain=["true", "no"]),
    ),
    case(
        "json-same-key-twice",
        422,
        "duplicate_field",
        "POST",
        BATCHES,
        lambda j: _json('{"open": true, "open": false}'),
    ),
    case(
        "field-2000-times",
        413,
        "payload_too_large",
        "POST",
        BATCHES,
        lambda j: _images(j, note=["x"] * 2000),
    ),
    # JSON that is not one small object
    case("json-30000-deep", 400, "invalid_json", "POST", BATCHES, lambda j: _json(DEEP)),
    case(
        "json-deep-in-field",
        400,
        "invalid_json",
        "POST",
        BATCHES,
        lambda j: _json('{"open": true, "reference": ' + DEEP + "}"),
    ),
    case(
        "json-deep-idempotent",
        400,
        "invalid_json",
        "POST",
        BATCHES,
        lambda j: _json(DEEP, headers={"Idempotency-Key": "deep"}),
    ),
    case("json-array", 400, "invalid_json", "POST", BATCHES, lambda j: _json("[1, 2]")),
    case("json-string", 400, "invalid_json", "POST", BATCHES, lambda j: _json('"open"')),
    case("json-number", 400, "invalid_json", "POST", BATCHES, lambda j: _json("1e999")),
    case("json-null", 400, "invalid_json", "POST", BATCHES, lambda j: _json("null")),
    case(
        "json-not-utf8",
        400,
        "invalid_json",
        "POST",
        BATCHES,
        lambda j: _json(b'{"open": true, "reference": "\xff"}'),
    ),
    case(
        "json-nul-key",
        422,
        "unknown_fields",
        "POST",
        BATCHES,
        lambda j: _json('{"open": true, "\\u0000": 1}'),
    ),
    # bodies the API reads into memory are small
    case(
        "json-70kb",
        413,
        "json_too_large",
        "POST",
        BATCHES,
        lambda j: _json('{"open": true, "reference": "' + "r" * 70_000 + '"}'),
    ),
    case(
        "json-70kb-close",
        413,
        "json_too_large",
        "POST",
        OPEN + "/close",
        lambda j: _json("[" + "0," * 35_000 + "0]"),
    ),
    case("json-70kb-delete", 413, "json_too_large", "DELETE", OPEN, lambda j: _json("0" * 70_000)),
    case(
        "urlencoded-70kb",
        413,
        "json_too_large",
        "POST",
        BATCHES,
        lambda j: {
            "data": "a=" + "b" * 70_000,
            "content_type": "application/x-www-form-urlencoded",
        },
    ),
    case(
        "jpeg-not-multipart",
        415,
        "unsupported_media_type",
        "POST",
        OPEN + "/images",
        lambda j: {"data": j, "content_type": "image/jpeg"},
    ),
    # headers
    case(
        "idem-key-nul",
        400,
        "invalid_idempotency_key",
        "POST",
        BATCHES,
        lambda j: {"json": {"open": True}, "headers": {"Idempotency-Key": "a\x00b"}},
    ),
    case(
        "idem-key-10000",
        400,
        "invalid_idempotency_key",
        "POST",
        BATCHES,
        lambda j: {"json": {"open": True}, "headers": {"Idempotency-Key": "k" * 10_000}},
    ),
    case(
        "auth-nul",
        401,
        "invalid_api_key",
        "GET",
        BATCHES,
        lambda j: {"headers": {"Authorization": "Bearer rq_\x00"}},
    ),
    # query parameters and path segments
    case("limit-nul", 400, "invalid_limit", "GET", BATCHES + "?limit=%00", nothing),
    case(
        "limit-5000-digits", 400, "invalid_limit", "GET", BATCHES + "?limit=" + "9" * 5000, nothing
    ),
    case("cursor-nul", 400, "invalid_cursor", "GET", OPEN + "/patients?cursor=%00", nothing),
    case("purge-nul", 400, "invalid_purge", "DELETE", OPEN + "?purge=%00", nothing),
    case("purge-garbage", 400, "invalid_purge", "DELETE", OPEN + "?purge=" + "x" * 10_000, nothing),
    case("batch-not-uuid", 404, "not_found", "GET", BATCHES + "/not-a-uuid", nothing),
    case("batch-id-nul", 404, "not_found", "GET", OPEN + "%00", nothing),
    case("image-id-nul", 404, "not_found", "GET", "/v1/images/%00/heatmap", nothing),
    case("model-name-nul", 404, "not_found", "GET", "/v1/models/retinaq-small%00", nothing),
    case("model-name-newline", 404, "not_found", "GET", "/v1/models/retinaq-small%0A", nothing),
]


def _counts(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions() as session:
        return {
            model.__tablename__: session.scalar(select(func.count()).select_from(model)) or 0
            for model in (Batch, Image, Result, IdempotencyKey, AuditEvent)
        }


def _files(store: Path) -> set[Path]:
    return {p for p in store.rglob("*") if p.is_file()}


@pytest.fixture
def open_batch(client: FlaskClient, auth: dict[str, str]) -> str:
    """An open batch of the caller's, for the routes that name one."""
    response = client.post("/v1/batches", headers=auth, json={"open": True})
    assert response.status_code == 201, response.get_json()
    batch_id: str = response.get_json()["id"]
    return batch_id


@pytest.mark.parametrize(("method", "path", "build", "status", "code"), CASES)
def test_hostile_request_gets_a_specific_4xx_and_leaves_nothing(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    settings: Settings,
    open_batch: str,
    method: str,
    path: str,
    build: Request,
    status: int,
    code: str,
) -> None:
    before, files_before = _counts(sessions), _files(settings.image_store)
    kwargs = build(fundus_jpeg(size=64))
    headers = {**auth, **kwargs.pop("headers", {})}
    response = client.open(path.format(batch=open_batch), method=method, headers=headers, **kwargs)

    assert response.status_code == status, response.get_data()[:300]
    assert response.is_json
    error = response.get_json()["error"]
    assert set(error) == {"code", "message"}
    assert error["code"] == code
    assert error["message"]
    assert list((settings.image_store / "tmp").iterdir()) == []
    assert _files(settings.image_store) == files_before
    assert _counts(sessions) == before


@pytest.mark.parametrize(
    "query", ["_external=0", "_method=POST", "endpoint=x", "batch_id=x", "_anchor=x"]
)
def test_query_parameters_never_steer_the_self_link(
    client: FlaskClient, auth: dict[str, str], open_batch: str, query: str
) -> None:
    for path in ("/v1/batches", f"/v1/batches/{open_batch}/results"):
        response = client.get(f"{path}?{query}", headers=auth)
        assert response.status_code == 200, response.get_data()[:300]
        assert response.get_json()["links"]["self"] == f"http://localhost{path}?{query}"


def test_unknown_fields_error_stays_small_however_many_are_sent(
    client: FlaskClient, auth: dict[str, str], sessions: sessionmaker[Session]
) -> None:
    keys = {f"k{i}": 1 for i in range(2000)}
    response = client.post("/v1/batches", headers=auth, json={"open": True, **keys})
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "unknown_fields"
    assert len(response.get_data()) < 2048
    assert response.get_json()["error"]["message"].endswith(" and 1990 more")

    huge = {f"field-{i}": 1 for i in range(100_000)}
    response = client.post("/v1/batches", headers=auth, json={"open": True, **huge})
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "json_too_large"
    assert _counts(sessions)["batches"] == 0


@pytest.mark.parametrize(
    "metadata",
    [
        ",".join(["filename", *(f"col{i}-" + "c" * 200 for i in range(2000))]) + "\n",
        "filename\n" + "".join(f"missing-{i}-{'m' * 200}.jpg\n" for i in range(2000)),
        "filename,laterality\n0.jpg," + "x" * 5000 + "\n",
    ],
    ids=["unknown-columns", "unmatched-rows", "long-laterality"],
)
def test_metadata_errors_stay_small_however_much_is_sent(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    metadata: str,
) -> None:
    parts = {"images": [(io.BytesIO(fundus_jpeg()), "0.jpg")], "metadata": metadata}
    response = client.post("/v1/batches", headers=auth, data=parts)
    assert response.status_code == 422
    assert len(response.get_data()) < 2048
    assert _counts(sessions)["images"] == 0


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["colour", "priority"], "'colour', 'priority'"),
        (
            [str(i) for i in range(12)],
            "'0', '1', '2', '3', '4', '5', '6', '7', '8', '9' and 2 more",
        ),
        (["x" * 100], "'" + "x" * 64 + "…"),
        # repr turns each NUL into four characters; the cut applies after that
        (["\x00" * 20], "'" + "\\x00" * 16 + "…"),
        ([], ""),
    ],
    ids=["two", "twelve", "long", "control-characters", "none"],
)
def test_echoed_client_values_are_capped(values: list[str], expected: str) -> None:
    assert echo_client_values(values) == expected


def _huge_json(total: int, chunk: int = MiB) -> Iterator[bytes]:
    """A JSON object with a ``total``-byte string, made a chunk at a time, never whole."""
    yield b'{"open": true, "reference": "'
    sent = 0
    while sent < total:
        piece = min(chunk, total - sent)
        sent += piece
        yield b"r" * piece
    yield b'"}'


class _GeneratedBody:
    """A WSGI input fed by a generator of chunks, counting the bytes handed to the server."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.handed_out = 0
        self._chunks = iter(chunks)
        self._pending = b""

    def read(self, size: int = -1) -> bytes:
        while not self._pending:
            self._pending = next(self._chunks, b"")
            if not self._pending:
                return b""
        take = len(self._pending) if size < 0 else size
        out, self._pending = self._pending[:take], self._pending[take:]
        self.handed_out += len(out)
        return out


@pytest.mark.parametrize("idempotency_key", [None, "big-body-1"])
def test_a_400_mib_json_body_with_content_length_is_refused_unread(
    client: FlaskClient,
    auth: dict[str, str],
    sessions: sessionmaker[Session],
    idempotency_key: str | None,
) -> None:
    body = _GeneratedBody(_huge_json(400 * MiB))
    headers = {**auth, **({"Idempotency-Key": idempotency_key} if idempotency_key else {})}
    response = client.post(
        "/v1/batches",
        headers=headers,
        content_type="application/json",
        environ_overrides={"wsgi.input": body, "CONTENT_LENGTH": str(400 * MiB)},
    )
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "json_too_large"
    assert body.handed_out == 0
    assert _counts(sessions) == dict.fromkeys(_counts(sessions), 0)


@pytest.mark.parametrize("idempotency_key", [None, "big-body-2"])
def test_a_400_mib_chunked_json_body_is_read_only_to_the_limit(
    client: FlaskClient,
    auth: dict[str, str],
    settings: Settings,
    sessions: sessionmaker[Session],
    idempotency_key: str | None,
) -> None:
    body = _GeneratedBody(_huge_json(400 * MiB))
    headers = {**auth, **({"Idempotency-Key": idempotency_key} if idempotency_key else {})}
    response = client.post(
        "/v1/batches",
        headers=headers,
        content_type="application/json",
        # no Content-Length; the server (gunicorn does) says it ends the stream itself
        environ_overrides={"wsgi.input": body, "wsgi.input_terminated": True},
    )
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "json_too_large"
    assert body.handed_out == settings.max_json_bytes + 1
    assert _counts(sessions) == dict.fromkeys(_counts(sessions), 0)


def test_a_small_chunked_json_body_is_accepted(client: FlaskClient, auth: dict[str, str]) -> None:
    body = _GeneratedBody([b'{"open": true, ', b'"reference": "chunked"}'])
    response = client.post(
        "/v1/batches",
        headers={**auth, "Idempotency-Key": "small-chunked"},
        content_type="application/json",
        environ_overrides={"wsgi.input": body, "wsgi.input_terminated": True},
    )
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["reference"] == "chunked"
