"""``retinaq submit`` and ``retinaq results`` against the real API served over HTTP.

The test app (PostgreSQL, the real image store) is served by Werkzeug on 127.0.0.1; the
CLI talks to it as a programme would. Covers folder-per-patient trees with metadata keyed
by relative paths, and results CSVs that a spreadsheet cannot run as formulas.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.serving import make_server

from cli.main import cli
from common.db.tables import Batch, Image, ImageState
from tests.support import REPO_ROOT
from worker.grading.pipeline import grade_images
from worker.runtime import WorkerRuntime

pytestmark = pytest.mark.slow


@pytest.fixture
def live_api(make_app: Callable[..., Flask]) -> Iterator[str]:
    """The test application served over real HTTP on a free loopback port."""
    server = make_server("127.0.0.1", 0, make_app(status_retry_after_s=1), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.port}"
    server.shutdown()
    thread.join()
    server.server_close()


def _key(auth: dict[str, str]) -> str:
    return auth["Authorization"].removeprefix("Bearer ")


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["filename", "patient_id", "laterality"], *rows])
    return path


def _tree(root: Path, jpeg: Callable[..., bytes], names: list[str]) -> Path:
    for seed, name in enumerate(names):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg(seed=500 + seed))
    return root


def test_submit_a_folder_per_patient_tree_with_metadata_keyed_by_relative_paths(
    live_api: str,
    auth: dict[str, str],
    client: FlaskClient,
    fundus_jpeg: Callable[..., bytes],
    tmp_path: Path,
) -> None:
    names = ["P001/left.jpg", "P001/right.jpg", "P002/left.jpg", "P002/right.jpg"]
    tree = _tree(tmp_path / "screening", fundus_jpeg, names)
    metadata = _write_csv(
        tmp_path / "metadata.csv",
        [["P001/left.jpg", "P001", "L"], ["P001/right.jpg", "P001", "R"]]
        + [["P002/left.jpg", "P002", "L"], ["P002/right.jpg", "P002", "R"]],
    )
    argv = ["submit", str(tree), "--metadata", str(metadata), "--chunk-size", "3"]
    result = CliRunner().invoke(cli, [*argv, "--api-url", live_api, "--api-key", _key(auth)])
    assert result.exit_code == 0, result.output

    status_url = result.stdout.strip().splitlines()[-1]
    batch = client.get(status_url, headers=auth).get_json()
    items = client.get(batch["links"]["images"], headers=auth).get_json()["items"]
    kept = {item["filename"]: (item["patient_id"], item["laterality"]) for item in items}
    assert kept == {name: (name[:4], name[5].upper()) for name in names}
    patients = client.get(batch["links"]["patients"], headers=auth).get_json()["items"]
    assert [(p["patient_id"], sorted(p["eyes"])) for p in patients] == [
        ("P001", ["L", "R"]),
        ("P002", ["L", "R"]),
    ]


def test_submit_refuses_a_bare_name_row_matching_files_in_two_folders(
    live_api: str,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    tree = _tree(tmp_path / "screening", fundus_jpeg, ["P001/left.jpg", "P002/left.jpg"])
    metadata = _write_csv(tmp_path / "metadata.csv", [["left.jpg", "P001", "L"]])
    # One image per request: each chunk alone would match the bare name once.
    argv = ["submit", str(tree), "--metadata", str(metadata), "--chunk-size", "1"]
    result = CliRunner().invoke(cli, [*argv, "--api-url", live_api, "--api-key", _key(auth)])
    assert result.exit_code == 1
    assert "'left.jpg' matches 2 files (P001/left.jpg, P002/left.jpg)" in result.output
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Batch)) == 0


FORMULAS = {
    "+SUM(1+1).jpg": '=HYPERLINK("http://x","y")',
    "-2+3.jpg": "@SUM(A1)",
    "@cmd.jpg": "-2+3+cmd|' /C calc'!A0",
    "plain.jpg": "P004",
}


def test_results_csvs_from_submit_and_results_cannot_run_as_formulas(
    live_api: str,
    auth: dict[str, str],
    client: FlaskClient,
    fundus_jpeg: Callable[..., bytes],
    runtime: WorkerRuntime,
    sessions: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    tree = _tree(tmp_path / "batch", fundus_jpeg, list(FORMULAS))
    metadata = _write_csv(tmp_path / "metadata.csv", [[f, p, "L"] for f, p in FORMULAS.items()])
    submitted_csv = tmp_path / "submitted.csv"
    log, printed = tmp_path / "submit.log", tmp_path / "submit.out"
    argv = [sys.executable, "-m", "cli", "submit", str(tree), "--metadata", str(metadata)]
    argv += ["--wait", "--out", str(submitted_csv), "--timeout", "120"]
    argv += ["--api-url", live_api, "--api-key", _key(auth)]
    with log.open("w") as errors, printed.open("w") as output:
        process = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=dict(os.environ), stdout=output, stderr=errors
        )
        deadline = time.monotonic() + 150
        # This test is the worker: it grades what the CLI uploads while the CLI waits.
        while process.poll() is None and time.monotonic() < deadline:
            with sessions() as session:
                queued = session.scalars(
                    select(Image.id).where(Image.state == ImageState.QUEUED)
                ).all()
            if queued:
                grade_images(runtime, list(queued))
            time.sleep(0.2)
        if process.poll() is None:
            process.kill()
        process.wait()
    assert process.returncode == 0, log.read_text()
    batch_id = printed.read_text().split()[0].rsplit("/", 1)[1]  # the status URL

    listing = client.get(f"/v1/batches/{batch_id}/images", headers=auth).get_json()["items"]
    assert {i["filename"]: i["patient_id"] for i in listing} == FORMULAS, "sent byte-faithfully"

    results_csv = tmp_path / "results.csv"
    fetched = CliRunner().invoke(
        cli,
        ["results", batch_id, "--out", str(results_csv), "--api-url", live_api]
        + ["--api-key", _key(auth)],
    )
    assert fetched.exit_code == 0, fetched.output
    for written in (submitted_csv, results_csv):
        with written.open(newline="", encoding="utf-8") as handle:
            rows = {row["filename"]: row for row in csv.DictReader(handle)}
        assert rows.keys() == {
            "'+SUM(1+1).jpg",
            "'-2+3.jpg",
            "'@cmd.jpg",
            "plain.jpg",
        }
        assert rows["'+SUM(1+1).jpg"]["patient_id"] == '\'=HYPERLINK("http://x","y")'
        assert rows["'-2+3.jpg"]["patient_id"] == "'@SUM(A1)"
        assert rows["'@cmd.jpg"]["patient_id"] == "'-2+3+cmd|' /C calc'!A0"
        assert rows["plain.jpg"]["patient_id"] == "P004"
        for row in rows.values():
            assert row["state"] == "graded"
            assert row["grade"] in {"0", "1", "2", "3", "4"}, "numbers stay numbers"
            assert float(row["confidence"]) > 0
