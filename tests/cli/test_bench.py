"""A smoke run of `retinaq bench` at tiny N, so the benchmark cannot rot. No timing asserts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from common.settings import PROJECT_ROOT

pytestmark = pytest.mark.slow


def _bench_databases(server_url: str) -> set[str]:
    engine = create_engine(server_url)
    with engine.connect() as connection:
        names = connection.scalars(
            text("SELECT datname FROM pg_database WHERE datname LIKE 'retinaq_bench_%'")
        ).all()
    engine.dispose()
    return set(names)


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
        cwd=PROJECT_ROOT,
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
    assert {"infer", "write"} <= set(report["pipeline"]["worker_stages_s"])
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
