"""The grading task's report file: one well-formed JSON line per task, summed by the bench."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cli.bench.pipeline import worker_stage_totals
from common.db.tables import Image
from common.settings import Settings
from common.storage import open_store
from worker.grading.pipeline import GradingReport
from worker.runtime import WorkerRuntime
from worker.tasks import append_task_report, grade_images_task

if TYPE_CHECKING:
    from worker.ml.model import LoadedModel


def test_concurrent_writers_append_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    # Lines far longer than a write buffer: a split write would show as a broken line.
    stages = {f"stage_{i:04d}": float(i) for i in range(2000)}

    def write(worker: int) -> None:
        for task in range(25):
            append_task_report(path, GradingReport(graded=worker, inferred=task, timings_ms=stages))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(8)))

    lines = path.read_bytes().split(b"\n")
    assert lines.pop() == b""
    records = [json.loads(line) for line in lines]
    assert len(records) == 8 * 25
    assert {(r["graded"], r["inferred"]) for r in records} == {
        (w, t) for w in range(8) for t in range(25)
    }
    assert all(r["timings_ms"] == stages for r in records)


def test_the_task_reports_a_graded_batch(
    settings: Settings,
    sessions: sessionmaker[Session],
    loaded_model: LoadedModel,
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    reports = tmp_path / "tasks.jsonl"
    runtime = WorkerRuntime(
        settings.model_copy(update={"task_reports_path": reports}),
        sessions,
        open_store(settings),
        loaded_model,
    )
    monkeypatch.setattr("worker.runtime._runtime", runtime)
    parts = [(io.BytesIO(fundus_jpeg(grade=g, seed=g)), f"g{g}.jpg") for g in range(3)]
    parts.append((io.BytesIO(b"not a photograph"), "notes.jpg"))
    response = client.post("/v1/batches", headers=auth, data={"images": parts})
    assert response.status_code == 202, response.get_json()
    with sessions() as session:
        ids = session.scalars(
            select(Image.id).where(Image.batch_id == uuid.UUID(response.get_json()["id"]))
        ).all()

    answer = grade_images_task([str(i) for i in ids])

    (line,) = reports.read_text().splitlines()
    record = json.loads(line)
    assert set(record) == {*asdict(GradingReport()), "finished_at"}
    assert datetime.fromisoformat(record["finished_at"]).tzinfo is not None
    assert (record["claimed"], record["failed"]) == (4, 1)
    assert record["graded"] + record["ungradable"] == 3 == answer["graded"] + answer["ungradable"]
    assert {"decode_wait", "infer", "write"} <= set(record["timings_ms"])
    totals = worker_stage_totals(reports)
    assert totals["infer"] == round(record["timings_ms"]["infer"] / 1000, 3)


def test_no_report_file_unless_one_is_configured(
    settings: Settings,
    sessions: sessionmaker[Session],
    loaded_model: LoadedModel,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    runtime = WorkerRuntime(settings, sessions, open_store(settings), loaded_model)
    monkeypatch.setattr("worker.runtime._runtime", runtime)
    monkeypatch.chdir(tmp_path)

    assert grade_images_task([str(uuid.uuid4())]) == {
        "graded": 0,
        "ungradable": 0,
        "failed": 0,
        "skipped": 1,
    }
    assert settings.task_reports_path is None
    assert list(tmp_path.iterdir()) == []
