"""GET /v1/models: the registry's models with their manifests, and which one is served."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from common.modelling.manifest import MANIFEST_NAME


@pytest.fixture
def registry(tmp_path: Path, registry_model: Callable[..., Path]) -> Path:
    root = tmp_path / "models"
    registry_model(root, "screening-a", version="1.0.0")
    registry_model(root, "screening-b", version="2.0.0")
    broken = root / "broken"
    broken.mkdir()
    (broken / MANIFEST_NAME).write_text("{not json")
    (root / "notes.txt").write_text("not a model")
    return root


def test_models_lists_the_registry_and_marks_the_served_model(
    make_app: Callable[..., Any], auth: dict[str, str], registry: Path
) -> None:
    served = registry / "screening-b" / "model.keras"
    client = make_app(
        models_dir=registry, model_name="screening-b", model_path=served
    ).test_client()
    body = client.get("/v1/models", headers=auth).get_json()
    assert body["serving"] == "screening-b"
    assert [m["name"] for m in body["items"]] == ["screening-a", "screening-b"]
    a, b = body["items"]
    assert (a["serving"], b["serving"]) == (False, True)
    assert b["manifest"]["version"] == "2.0.0"
    assert b["manifest"]["preprocessing_steps"][0] == "crop_field_of_view"
    assert "quadratic_weighted_kappa" in b["manifest"]["metrics"]
    assert b["links"]["self"] == "http://localhost/v1/models/screening-b"
    one = client.get(b["links"]["self"], headers=auth).get_json()
    assert one == b


def test_a_model_path_names_the_served_model(
    make_app: Callable[..., Any], auth: dict[str, str], registry: Path
) -> None:
    app = make_app(models_dir=registry, model_path=registry / "screening-a" / "model.keras")
    body = app.test_client().get("/v1/models", headers=auth).get_json()
    assert body["serving"] == "screening-a"
    assert [m["serving"] for m in body["items"]] == [True, False]


@pytest.mark.parametrize("name", ["broken", "nothing-here", "..", "notes.txt"])
def test_unknown_or_broken_models_are_404(
    make_app: Callable[..., Any], auth: dict[str, str], registry: Path, name: str
) -> None:
    client = make_app(models_dir=registry).test_client()
    response = client.get(f"/v1/models/{name}", headers=auth)
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


def test_models_need_a_key(client: FlaskClient) -> None:
    assert client.get("/v1/models").status_code == 401


def test_the_bundled_registry_lists_the_shipped_model(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    body = client.get("/v1/models", headers=auth).get_json()
    assert "retinaq-small" in [m["name"] for m in body["items"]]
