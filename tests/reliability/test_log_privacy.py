"""No patient id, filename or API key in any log the running system writes.

The whole stack runs as real processes (gunicorn API, reconciler, worker) on a private
PostgreSQL, as an application role rather than the superuser. The test submits a batch
with distinctive patient ids and filenames, pages through every listing with cursors,
sends keys in a query string and a bad key, and makes the database refuse an INSERT of
images (the application role loses its INSERT privilege, as after a botched grant), so the
API's unexpected-error path logs an SQLAlchemy exception whose statement bound those
values. Then every log file is searched for each secret in every form it could take, in
both log formats; in JSON every line of the API, worker and reconciler must parse.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.orm import Session

from common.access.apikeys import PUBLIC_PREFIX_LENGTH, create_programme
from tests.log_lines import forms, json_lines

pytestmark = pytest.mark.slow

APP_ROLE = "retinaq_app"
FINISHED = {"completed", "completed_with_errors", "cancelled"}


def _admin(private_postgres: Any, sql: str) -> None:
    engine = create_engine(private_postgres.url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(sql))
    engine.dispose()


@pytest.fixture
def app_role_url(private_postgres: Any) -> Iterator[str]:
    """A login role with ordinary table privileges: what a production API connects as."""
    password = secrets.token_hex(8)
    for sql in (
        f"CREATE ROLE {APP_ROLE} LOGIN PASSWORD '{password}'",
        f"GRANT USAGE ON SCHEMA public TO {APP_ROLE}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP_ROLE}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE}",
    ):
        _admin(private_postgres, sql)
    yield (
        make_url(private_postgres.url)
        .set(username=APP_ROLE, password=password)
        .render_as_string(hide_password=False)
    )


def _follow(http: httpx.Client, url: str) -> list[dict[str, Any]]:
    """Every item of a listing, one per page, so each page after the first uses a cursor."""
    items: list[dict[str, Any]] = []
    next_url: str | None = f"{url}?limit=1"
    while next_url:
        response = http.get(next_url)
        assert response.status_code == 200, response.text
        body = response.json()
        items += body["items"]
        next_url = body["links"].get("next")
    return items


def _multipart(
    tag: str, count: int, jpeg: Callable[..., bytes], seed: int
) -> tuple[list[tuple[str, Any]], list[str], list[str]]:
    """Images and a metadata CSV naming a patient for each, all marked with ``tag``."""
    filenames = [f"scan-{tag}-{i}.jpg" for i in range(count)]
    patients = [f"MRN-{tag}-{i:04d}" for i in range(count)]
    csv = "filename,patient_id,laterality\n" + "".join(
        f"{f},{p},{'LR'[i % 2]}\n" for i, (f, p) in enumerate(zip(filenames, patients, strict=True))
    )
    files: list[tuple[str, Any]] = [
        ("images", (name, jpeg(grade=i % 5, seed=seed + i), "image/jpeg"))
        for i, name in enumerate(filenames)
    ]
    files.append(("metadata", ("metadata.csv", csv.encode(), "text/csv")))
    return files, filenames, patients


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_logs_hold_no_patient_ids_filenames_or_keys(
    log_format: str,
    stack: Any,
    private_postgres: Any,
    app_role_url: str,
    fundus_jpeg: Callable[..., bytes],
    wait: Callable,
) -> None:
    engine = create_engine(private_postgres.url)
    with Session(engine) as session, session.begin():
        _, key = create_programme(session, "Privacy")
    engine.dispose()
    bad_key = "rq_" + secrets.token_urlsafe(32)
    secrets_to_hide = {
        "api key": key.secret,
        "api key's secret part": key.secret[PUBLIC_PREFIX_LENGTH:],
        "bad key": bad_key,
        "bad key's secret part": bad_key[PUBLIC_PREFIX_LENGTH:],
    }

    stack.env["RETINAQ_DATABASE_URL"] = app_role_url
    stack.env["RETINAQ_LOG_FORMAT"] = log_format
    stack.start_api()
    stack.start_reconciler()
    stack.start_worker()
    tag = secrets.token_hex(4).upper()
    files, filenames, patients = _multipart(f"OK{tag}", 4, fundus_jpeg, 4100)
    refused, refused_names, refused_patients = _multipart(f"NO{tag}", 2, fundus_jpeg, 4200)
    for value in [*filenames, *patients, *refused_names, *refused_patients]:
        secrets_to_hide[value] = value

    headers = {"Authorization": f"Bearer {key.secret}"}
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=120) as http:
        created = http.post("/v1/batches", files=files)
        assert created.status_code == 202, created.text
        batch = created.json()

        # The database refuses the images' INSERT: the API answers 500 and logs why.
        _admin(private_postgres, f"REVOKE INSERT ON images FROM {APP_ROLE}")
        try:
            failed = http.post("/v1/batches", files=refused)
        finally:
            _admin(private_postgres, f"GRANT INSERT ON images TO {APP_ROLE}")
        assert failed.status_code == 500, failed.text
        assert failed.json()["error"]["code"] == "internal_error"

        # A key sent in the query string (a client mistake the logs must survive), and a bad one.
        misplaced = httpx.get(f"{stack.api_url}/v1/batches?api_key={key.secret}", timeout=30)
        assert misplaced.status_code == 401
        wrong = httpx.get(
            f"{stack.api_url}/v1/batches?api_key={bad_key}",
            headers={"Authorization": f"Bearer {bad_key}"},
            timeout=30,
        )
        assert wrong.status_code == 401
        assert wrong.json()["error"]["code"] == "invalid_api_key"

        def finished() -> bool:
            return http.get(batch["links"]["self"]).json()["state"] in FINISHED

        wait(finished, 240, "the batch to be graded")
        listed = _follow(http, batch["links"]["patients"])
        assert [row["patient_id"] for row in listed] == patients
        results = _follow(http, batch["links"]["results"])
        assert [row["filename"] for row in results] == filenames
        assert len(_follow(http, batch["links"]["images"])) == 4
    stack.stop_all()

    logs = sorted(stack.log_dir.glob("*.log")) + [Path(private_postgres.log)]
    text_of = {path.name: path.read_text(errors="replace") for path in logs}
    if log_format == "json":
        for path in logs:
            if path.name.startswith(("api-", "worker-", "reconciler-")):
                json_lines(path)
    api_log = "\n".join(v for k, v in text_of.items() if k.startswith("api-"))
    assert "unhandled error in request" in api_log, "the refused INSERT was not logged"
    assert "permission denied for table images" in api_log
    leaks = [
        f"{what} ({form!r}) in {name}"
        for what, value in secrets_to_hide.items()
        for form in forms(value)
        for name, content in text_of.items()
        if form in content
    ]
    assert not leaks, "\n".join(leaks)
