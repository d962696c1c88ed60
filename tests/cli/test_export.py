"""``retinaq export BATCH --format csv|fhir`` against the real API served over HTTP.

The CSV is the API's own ``results.csv``, byte for byte; the FHIR Bundle is every page the
API hands out (two patients a page here) joined into one that still validates as R4.
"""

from __future__ import annotations

import io
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fhir.resources.R4B.bundle import Bundle
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.serving import make_server

from cli.main import cli
from common.db.tables import Image
from worker.grading.pipeline import grade_images
from worker.runtime import WorkerRuntime

pytestmark = pytest.mark.slow

PATIENTS = {"P1/l.jpg": "P1", "P1/r.jpg": "P1", "P2/l.jpg": "P2", "P3/l.jpg": "=cmd"}


@pytest.fixture
def served(make_app: Callable[..., Flask]) -> Iterator[tuple[str, FlaskClient]]:
    """The API over real HTTP (FHIR pages of two patients) and a test client on the same app."""
    app = make_app(page_size_default=2)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.port}", app.test_client()
    server.shutdown()
    thread.join()
    server.server_close()


@pytest.fixture
def graded_batch(
    served: tuple[str, FlaskClient],
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    runtime: WorkerRuntime,
    sessions: sessionmaker[Session],
) -> str:
    _, client = served
    parts = [(io.BytesIO(fundus_jpeg(seed=40 + i)), name) for i, name in enumerate(PATIENTS)]
    metadata = "filename,patient_id,laterality\n" + "".join(
        f"{name},{patient},{'L' if name.endswith('l.jpg') else 'R'}\n"
        for name, patient in PATIENTS.items()
    )
    response = client.post(
        "/v1/batches", headers=auth, data={"images": parts, "metadata": metadata}
    )
    assert response.status_code == 202, response.get_json()
    batch_id: str = response.get_json()["id"]
    with sessions() as session:
        ids = session.scalars(select(Image.id).where(Image.batch_id == uuid.UUID(batch_id)))
        grade_images(runtime, list(ids))
    return batch_id


def _export(api_url: str, auth: dict[str, str], *argv: str) -> Any:
    key = auth["Authorization"].removeprefix("Bearer ")
    return CliRunner().invoke(cli, ["export", *argv, "--api-url", api_url, "--api-key", key])


def test_csv_export_is_the_apis_results_csv(
    served: tuple[str, FlaskClient], auth: dict[str, str], graded_batch: str, tmp_path: Path
) -> None:
    api_url, client = served
    out = tmp_path / "exports" / "results.csv"
    result = _export(api_url, auth, graded_batch, "--format", "csv", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    expected = client.get(f"/v1/batches/{graded_batch}/results.csv", headers=auth).data
    assert out.read_bytes() == expected
    assert b"'=cmd" in expected, "formula-safe as the API wrote it"


def test_fhir_export_joins_every_page_into_one_valid_bundle(
    served: tuple[str, FlaskClient], auth: dict[str, str], graded_batch: str, tmp_path: Path
) -> None:
    api_url, client = served
    first = client.get(f"/v1/batches/{graded_batch}/fhir", headers=auth).get_json()
    assert any(link["relation"] == "next" for link in first["link"]), "the API pages"

    out = tmp_path / "bundle.json"
    result = _export(api_url, auth, graded_batch, "--format", "fhir", "--out", str(out))
    assert result.exit_code == 0, result.output
    bundle = json.loads(out.read_text(encoding="utf-8"))
    Bundle.model_validate(bundle)
    assert [link["relation"] for link in bundle["link"]] == ["self"]
    full_urls = [entry["fullUrl"] for entry in bundle["entry"]]
    assert len(full_urls) == len(set(full_urls)), "a Device two pages include is kept once"
    reports = [
        entry["resource"]["subject"]["identifier"]["value"]
        for entry in bundle["entry"]
        if entry["resource"]["resourceType"] == "DiagnosticReport"
    ]
    assert sorted(reports) == sorted(set(PATIENTS.values()))
    paged: set[str] = set()
    url = f"/v1/batches/{graded_batch}/fhir"
    while url:
        page = client.get(url, headers=auth).get_json()
        paged.update(entry["fullUrl"] for entry in page["entry"])
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), "")
    assert set(full_urls) == paged, "every entry of every page"


def test_export_of_a_batch_the_key_cannot_see_is_one_line_and_writes_nothing(
    served: tuple[str, FlaskClient], auth: dict[str, str], tmp_path: Path
) -> None:
    api_url, _ = served
    out = tmp_path / "results.csv"
    missing = str(uuid.uuid4())
    result = _export(api_url, auth, missing, "--format", "csv", "--out", str(out))
    assert result.exit_code == 1
    assert result.output.strip().startswith("Error: 404 not_found:")
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.iterdir()), "no file, not even a partial one"
