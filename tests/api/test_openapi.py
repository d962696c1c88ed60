"""The OpenAPI document: valid 3.1, every /v1 route in it, and real answers matching it.

The responses come from real flows (a batch submitted over HTTP, graded by the worker's
code in-process, then read back) and from provoked errors; each JSON body is checked
against the schema the document gives for its path, method and status.
"""

from __future__ import annotations

import ast
import io
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from PIL import ImageFilter
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.test import TestResponse

import api
from api.docs import schemas
from api.docs.spec import openapi_document
from api.v1 import batches
from common.db.tables import Image
from lab.synthetic import encode_image, generate_fundus
from worker.grading.heatmaps import make_heatmaps
from worker.grading.pipeline import grade_images
from worker.runtime import WorkerRuntime

_IGNORED_METHODS = {"HEAD", "OPTIONS"}


def _openapi_path(rule: str) -> str:
    """``/v1/batches/<uuid:batch_id>`` as the document writes it: ``/v1/batches/{batch_id}``."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


@pytest.fixture
def document(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/v1/openapi.json")  # no API key
    assert response.status_code == 200
    return response.get_json()  # type: ignore[no-any-return]


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"].startswith("3.1.")
    assert document["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert document["security"] == [{"apiKey": []}]
    assert document["servers"] == [{"url": "http://localhost"}]


def test_every_v1_route_is_described_with_its_methods(app: Flask, document: dict[str, Any]) -> None:
    described = {
        (path, method.upper()) for path, item in document["paths"].items() for method in item
    }
    routes = {
        (_openapi_path(rule.rule), method)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/v1/") and not rule.endpoint.startswith("docs.")
        for method in (rule.methods or set()) - _IGNORED_METHODS
    }
    assert routes, "no /v1 routes found"
    assert routes - described == set(), "routes without a description"
    assert described - routes == set(), "descriptions of routes that do not exist"


def test_a_route_added_without_a_description_is_missing_from_the_document(
    make_app: Callable[..., Flask],
) -> None:
    app = make_app()
    app.add_url_rule("/v1/undescribed", "undescribed", lambda: "")
    assert "/v1/undescribed" not in openapi_document(app)["paths"]


def test_every_operation_declares_its_errors_and_headers(document: dict[str, Any]) -> None:
    for path, item in document["paths"].items():
        for method, op in item.items():
            responses = op["responses"]
            assert {"401", "503"} <= set(responses), (path, method)
            for status, response in responses.items():
                assert "X-Request-ID" in response["headers"], (path, method, status)
            if method == "post":
                names = {p["name"] for p in op["parameters"] if p["in"] == "header"}
                assert "Idempotency-Key" in names, path
    create = document["paths"]["/v1/batches"]["post"]
    assert set(create["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert "Location" in create["responses"]["202"]["headers"]
    schemas = document["components"]["schemas"]

    def upload_fields(path: str) -> set[str]:
        ref = document["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]
        return set(schemas[ref["schema"]["$ref"].rsplit("/", 1)[1]]["properties"])

    assert "callback_url" in upload_fields("/v1/batches")
    assert upload_fields("/v1/batches/{batch_id}/images") == {"images", "metadata"}
    listing = document["paths"]["/v1/batches/{batch_id}/results"]["get"]
    assert {p["name"] for p in listing["parameters"] if p["in"] == "query"} == {"limit", "cursor"}
    assert {p["name"] for p in listing["parameters"] if p["in"] == "path"} == {"batch_id"}


def test_the_models_use_the_views_limits() -> None:
    assert schemas.MAX_REFERENCE_LENGTH == batches.MAX_REFERENCE_LENGTH


class Conformance:
    """Checks responses against the document's schema for their operation and status."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.checked: set[tuple[str, str, int]] = set()

    def check(self, path: str, method: str, response: TestResponse) -> None:
        status = str(response.status_code)
        described = self.document["paths"][path][method]["responses"]
        assert status in described, f"{method} {path} answered {status}: {response.get_data()!r}"
        entry = described[status]
        for name in entry["headers"]:
            if name in ("Location", "X-Request-ID"):
                assert name in response.headers, (path, status, name)
        self.checked.add((path, method, response.status_code))
        content = entry.get("content", {})
        if not content:
            assert response.get_data() == b""
            return
        media_type = response.mimetype
        assert media_type in content, (path, status, media_type)
        if response.is_json:  # application/json and application/fhir+json
            schema = {**content[media_type]["schema"], "components": self.document["components"]}
            errors = sorted(Draft202012Validator(schema).iter_errors(response.get_json()), key=str)
            assert not errors, f"{method} {path} {status}: {errors[0]}"


@pytest.fixture
def conformance(document: dict[str, Any]) -> Conformance:
    return Conformance(document)


def _ids(sessions: sessionmaker[Session], batch_id: str) -> dict[str, uuid.UUID]:
    with sessions() as session:
        rows = session.execute(
            select(Image.filename, Image.id).where(Image.batch_id == uuid.UUID(batch_id))
        ).all()
    return dict(rows)


def test_real_responses_match_their_schemas(
    client: FlaskClient,
    auth: dict[str, str],
    runtime: WorkerRuntime,
    sessions: sessionmaker[Session],
    document: dict[str, Any],
    conformance: Conformance,
) -> None:
    check = conformance.check
    healthy = generate_fundus(0, 51, 512)
    files = {
        "healthy.jpg": encode_image(healthy),
        "proliferative.jpg": encode_image(generate_fundus(4, 52, 512)),
        "blurred.jpg": encode_image(healthy.filter(ImageFilter.GaussianBlur(6))),
    }
    metadata = (
        "filename,patient_id,laterality\n"
        "healthy.jpg,P1,L\nproliferative.jpg,P1,R\nblurred.jpg,P2,L\n"
    )
    parts = [(io.BytesIO(data), name) for name, data in files.items()]
    created = client.post(
        "/v1/batches",
        headers={**auth, "Idempotency-Key": "openapi-1"},
        data={"images": parts, "metadata": metadata, "reference": "doc", "explain": "true"},
    )
    check("/v1/batches", "post", created)
    batch = created.get_json()
    batch_path = "/v1/batches/{batch_id}"
    check(batch_path, "get", client.get(batch["links"]["self"], headers=auth))  # pending

    ids = _ids(sessions, batch["id"])
    grade_images(runtime, list(ids.values()))
    make_heatmaps(runtime, list(ids.values()))

    # Every GET of a batch the document describes (results, images, patients, exports, …).
    reads = [
        p for p, item in document["paths"].items() if p.startswith(batch_path) and "get" in item
    ]
    for path in reads:
        check(path, "get", client.get(path.replace("{batch_id}", batch["id"]), headers=auth))
    assert client.get(batch["links"]["self"], headers=auth).get_json()["counts"]
    for name in ("results", "images", "patients"):
        listing = client.get(batch["links"][name] + "?limit=1", headers=auth)
        check(f"{batch_path}/{name}", "get", listing)
        assert "next" in listing.get_json()["links"]
        check(
            f"{batch_path}/{name}",
            "get",
            client.get(listing.get_json()["links"]["next"], headers=auth),
        )
    check("/v1/batches", "get", client.get("/v1/batches", headers=auth))

    rows = client.get(batch["links"]["results"], headers=auth).get_json()["items"]
    for row in rows:
        check("/v1/images/{image_id}", "get", client.get(row["links"]["image"], headers=auth))
    heatmaps = [r["links"]["heatmap"] for r in rows if r["links"]["heatmap"]]
    assert heatmaps
    check("/v1/images/{image_id}/heatmap", "get", client.get(heatmaps[0], headers=auth))
    blurred = next(r for r in rows if r["filename"] == "blurred.jpg")
    no_map = client.get(f"/v1/images/{blurred['image_id']}/heatmap", headers=auth)
    check("/v1/images/{image_id}/heatmap", "get", no_map)
    assert no_map.get_json()["error"]["code"] == "no_heatmap"

    models = client.get("/v1/models", headers=auth)
    check("/v1/models", "get", models)
    for item in models.get_json()["items"]:
        check("/v1/models/{name}", "get", client.get(item["links"]["self"], headers=auth))

    opened = client.post("/v1/batches", headers=auth, json={"open": True, "reference": "o"})
    check("/v1/batches", "post", opened)
    open_batch = opened.get_json()
    added = client.post(
        open_batch["links"]["add_images"],
        headers=auth,
        data={"images": [(io.BytesIO(files["healthy.jpg"]), "a.jpg")]},
    )
    check("/v1/batches/{batch_id}/images", "post", added)
    check(
        "/v1/batches/{batch_id}/close",
        "post",
        client.post(open_batch["links"]["close"], headers=auth),
    )
    check(batch_path, "delete", client.delete(open_batch["links"]["self"], headers=auth))
    check(
        batch_path,
        "delete",
        client.delete(open_batch["links"]["self"] + "?purge=true", headers=auth),
    )
    assert {s for _p, _m, s in conformance.checked} >= {200, 201, 202, 204, 404}
    operations = {(p, m) for p, item in document["paths"].items() for m in item}
    assert {(p, m) for p, m, _s in conformance.checked} == operations, "an operation unchecked"


def test_error_responses_match_their_schemas(
    client: FlaskClient, auth: dict[str, str], conformance: Conformance
) -> None:
    check = conformance.check
    check("/v1/batches", "get", client.get("/v1/batches"))  # 401
    check("/v1/batches", "get", client.get("/v1/batches?limit=0", headers=auth))  # 400
    missing = f"/v1/batches/{uuid.uuid4()}"
    check("/v1/batches/{batch_id}", "get", client.get(missing, headers=auth))  # 404
    check("/v1/batches", "post", client.post("/v1/batches", headers=auth, data="x"))  # 415
    unknown = client.post("/v1/batches", headers=auth, json={"open": True, "colour": "red"})
    check("/v1/batches", "post", unknown)  # 422
    opened = client.post("/v1/batches", headers=auth, json={"open": True}).get_json()
    client.post(opened["links"]["close"], headers=auth)
    closed = client.post(
        f"/v1/batches/{opened['id']}/images",
        headers=auth,
        data={"images": [(io.BytesIO(b"x"), "a.jpg")]},
    )
    check("/v1/batches/{batch_id}/images", "post", closed)  # 409
    assert {s for _p, _m, s in conformance.checked} == {400, 401, 404, 409, 415, 422}


@pytest.mark.parametrize(
    ("query", "code", "message"),
    [
        ("limit=abc", "invalid_limit", "limit must be an integer"),
        ("limit=0", "invalid_limit", "limit must be between 1 and "),
        ("limit=", None, None),
        ("cursor=" + "x" * 600, "invalid_cursor", "the cursor is not valid"),
    ],
)
def test_query_validation_keeps_the_codes_and_messages(
    client: FlaskClient, auth: dict[str, str], query: str, code: str | None, message: str | None
) -> None:
    response = client.get(f"/v1/batches?{query}", headers=auth)
    if code is None:
        assert response.status_code == 200
        return
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == code and error["message"].startswith(message or "")


def test_json_body_validation_keeps_the_codes_and_messages(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    cases = [
        ({"open": False}, "open_required"),
        ({"open": 1}, "open_required"),
        ({"open": "true"}, "open_required"),
        ({"reference": "x"}, "open_required"),
        ({"open": True, "reference": "x" * 201}, "invalid_reference"),
        ({"open": True, "reference": 7}, "invalid_reference"),
        ({"open": True, "reference": "a\u0000b"}, "invalid_reference"),
        ({"open": True, "explain": "maybe"}, "invalid_explain"),
        ({"open": True, "explain": 1}, "invalid_explain"),
        ({"open": True, "colour": 1, "explain": "maybe"}, "unknown_fields"),
    ]
    for body, code in cases:
        response = client.post("/v1/batches", headers=auth, json=body)
        assert (response.status_code, response.get_json()["error"]["code"]) == (422, code), body
    accepted = client.post("/v1/batches", headers=auth, json={"open": True, "explain": "yes"})
    assert accepted.status_code == 201 and accepted.get_json()["explain"] is True


def test_the_docs_page_loads_with_assets_served_by_the_app(client: FlaskClient) -> None:
    page = client.get("/v1/docs")  # no API key
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert not re.search(r"(https?:)?//[a-z0-9]", html, re.IGNORECASE), "an outside URL"
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    assert any(a.endswith("swagger-ui.css") for a in assets)
    for asset in assets:
        assert asset.startswith("/v1/docs/"), asset
        response = client.get(asset)
        assert response.status_code == 200 and response.get_data(), asset
        response.close()
    assert '"/v1/openapi.json"' in html
    assert client.get("/v1/docs/assets/index.html").status_code == 404
    assert client.get("/v1/docs/assets/..%2Fflask_swagger_ui.py").status_code == 404


def _api_error_codes() -> set[tuple[int, str]]:
    """Every ``ApiError(status, "code", …)`` the API's source can raise."""
    found = set()
    for path in Path(api.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "ApiError"
                and len(node.args) >= 2
                and all(isinstance(a, ast.Constant) for a in node.args[:2])
            ):
                found.add((node.args[0].value, node.args[1].value))
    return found


def test_every_error_code_the_api_raises_is_documented(document: dict[str, Any]) -> None:
    codes = _api_error_codes()
    assert (404, "not_found") in codes and (422, "unknown_fields") in codes
    described: dict[str, str] = {}
    for item in document["paths"].values():
        for op in item.values():
            for status, response in op["responses"].items():
                described[status] = response["description"]
    for status, code in codes:
        if status == 408:  # the server's own body timeout, before any route is chosen
            continue
        assert re.search(rf"\b{code}\b", described.get(str(status), "")), (status, code)
