"""A smoke run of `retinaq bench` at tiny N, so the benchmark cannot rot (no timing asserts),
and the report's pieces on their own: its keys, and the worker's stages read from data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import click
import pytest
from sqlalchemy import create_engine, text

from cli.bench.pipeline import worker_stage_totals
from cli.bench.report import (
    Drain,
    Ingest,
    Offline,
    PipelineDrain,
    Poll,
    Served,
    Throughput,
    make_report,
    write_report,
)
from tests.support import REPO_ROOT
from worker.grading.pipeline import GradingReport
from worker.tasks import append_task_report

THROUGHPUT = {"images", "seconds", "images_per_s"}
DRAIN = THROUGHPUT | {"worker_peak_rss_mib_at_1000", "worker_peak_rss_mib_at_end"}


def test_the_bench_sums_the_stages_the_worker_reported(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    append_task_report(path, GradingReport(timings_ms={"infer": 1500.0, "write": 250.0}))
    append_task_report(path, GradingReport(timings_ms={"infer": 500.0, "decode_wait": 125.5}))
    append_task_report(path, GradingReport(skipped=3))  # nothing claimed: no timings

    assert worker_stage_totals(path) == {"infer": 2.0, "write": 0.25, "decode_wait": 0.126}


def test_only_tasks_finished_since_the_batch_began_count(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    append_task_report(path, GradingReport(timings_ms={"infer": 1000.0}))  # a warm-up task
    time.sleep(0.01)  # the clock moves on, as it does between two tasks
    since = datetime.now(UTC)
    time.sleep(0.01)
    append_task_report(path, GradingReport(timings_ms={"infer": 250.0, "write": 50.0}))

    assert worker_stage_totals(path, since=since) == {"infer": 0.25, "write": 0.05}
    assert worker_stage_totals(path) == {"infer": 1.25, "write": 0.05}


def test_a_worker_that_reported_nothing_fails_the_run(tmp_path: Path) -> None:
    with pytest.raises(click.ClickException, match="no task reports"):
        worker_stage_totals(tmp_path / "tasks.jsonl")


def test_the_report_keeps_its_keys_and_ratios(tmp_path: Path) -> None:
    offline = Offline.measured(200, 20.0, stages_s={"read": 0.1})
    pipeline = PipelineDrain.measured(
        200,
        16.0,
        worker_peak_rss_mib_at_1000=1.0,
        worker_peak_rss_mib_at_end=2.0,
        worker_stages_s={"infer": 9.0},
    )
    served = Served(
        ingest=Ingest.measured(200, 0.5, api_peak_rss_mib_at_1000=1.0, api_peak_rss_mib_at_end=1.0),
        pipeline=pipeline,
        end_to_end=Throughput.measured(200, 25.0),
        poll=Poll(rows=10, pollers=20, requests=40, p50_ms=1.0, p99_ms=2.0),
    )
    naive = Drain.measured(100, 25.0, worker_peak_rss_mib_at_1000=1, worker_peak_rss_mib_at_end=1)
    out = tmp_path / "deep" / "bench.json"

    write_report(make_report("small", 32, ["CPU:0"], "db", offline, served, naive), out)

    report = json.loads(out.read_text())
    assert list(report) == [
        "arch",
        "batch_size",
        "cpu_cores",
        "platform",
        "tensorflow_devices",
        "scratch_database",
        "offline",
        "ingest",
        "pipeline",
        "end_to_end",
        "poll",
        "naive",
        "ratios",
    ]
    assert set(report["offline"]) == THROUGHPUT | {"stages_s"}
    assert set(report["ingest"]) == THROUGHPUT | {
        "api_peak_rss_mib_at_1000",
        "api_peak_rss_mib_at_end",
    }
    assert set(report["pipeline"]) == DRAIN | {"worker_stages_s"}
    assert set(report["naive"]) == DRAIN
    assert set(report["end_to_end"]) == THROUGHPUT
    assert report["offline"] == {
        "images": 200,
        "seconds": 20.0,
        "images_per_s": 10.0,
        "stages_s": {"read": 0.1},
    }
    assert report["ratios"] == {
        "pipeline_over_offline": 1.25,
        "pipeline_over_naive": 3.12,
        "ingest_over_pipeline": 32.0,
        "end_to_end_over_offline": 0.8,
    }


def _bench_databases(server_url: str) -> set[str]:
    engine = create_engine(server_url)
    with engine.connect() as connection:
        names = connection.scalars(
            text("SELECT datname FROM pg_database WHERE datname LIKE 'retinaq_bench_%'")
        ).all()
    engine.dispose()
    return set(names)


@pytest.mark.slow
def test_bench_measures_every_figure_and_cleans_up(
    postgres_server_url: str, redis_url: str, tmp_path: Path
) -> None:
    before = _bench_databases(postgres_server_url)
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETINAQ_")}
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "bench",
            "--n",
            "12",
            "--naive-n",
            "3",
            "--batch-size",
            "4",
            "--poll-rows",
            "200",
            "--poll-seconds",
            "0.5",
            "--out",
            str(out),
        ],
        env={
            **env,
            "RETINAQ_BENCH_DATABASE_URL": postgres_server_url,
            "RETINAQ_BENCH_BROKER_URL": redis_url,
            "COLUMNS": "200",
        },
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["cpu_cores"] == os.cpu_count()
    assert report["tensorflow_devices"]
    for section in ("offline", "ingest", "pipeline", "naive", "end_to_end"):
        assert report[section]["images_per_s"] > 0, section
    assert report["offline"]["images"] == report["pipeline"]["images"] == 12
    assert report["naive"]["images"] == 3
    assert set(report["offline"]["stages_s"]) == {"read", "decode_preprocess", "infer"}
    # Summed from the worker's task reports, not its log.
    assert {"decode_wait", "infer", "write"} <= set(report["pipeline"]["worker_stages_s"])
    # Every one of the 20 pollers sends at least one request, however short the run.
    assert report["poll"]["requests"] >= report["poll"]["pollers"] == 20
    assert report["poll"]["p99_ms"] >= report["poll"]["p50_ms"]
    assert set(report["ratios"]) == {
        "pipeline_over_offline",
        "pipeline_over_naive",
        "ingest_over_pipeline",
        "end_to_end_over_offline",
    }
    assert "pipeline_over_offline" in completed.stdout
    # Only this run's database: another run on the same server may hold one of its own.
    assert report["scratch_database"].startswith("retinaq_bench_")
    assert report["scratch_database"] not in before
    assert report["scratch_database"] not in _bench_databases(postgres_server_url), (
        "the scratch database was dropped"
    )
