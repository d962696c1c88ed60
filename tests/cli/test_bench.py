"""A smoke run of `retinaq bench` at tiny N, so the benchmark cannot rot (no timing asserts),
and the report's pieces on their own: its keys, and the worker's stages read from data."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import click
import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from sqlalchemy import create_engine, text

from cli.bench.data import parse_rows, parse_sizes, write_images
from cli.bench.decoding import files_by_size, measure_decoding
from cli.bench.pipeline import images_handled, worker_stage_totals
from cli.bench.poll import server_timing
from cli.bench.report import (
    BackendCost,
    DecodeCost,
    Drain,
    Fairness,
    Ingest,
    Offline,
    PipelineDrain,
    Poll,
    Served,
    Throughput,
    cores_per_gpu,
    make_decoding,
    make_report,
    mix_cost,
    per_core_ceiling,
    pipeline_ms_per_image,
    report_table,
    write_report,
)
from cli.bench.servers import Servers
from common.settings import BUNDLED_MODEL
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


COST = BackendCost(
    images=200,
    transactions=3.5,
    rows_inserted=2.0,
    rows_updated=4.0,
    rows_deleted=0.0,
    buffer_accesses=60.5,
    redis_commands=0.25,
)
POLL = Poll(
    rows=10,
    pollers=20,
    requests=40,
    p50_ms=1.0,
    p99_ms=2.0,
    server_p50_ms=0.8,
    server_p99_ms=1.5,
    server_cpu_p50_ms=0.5,
)


def test_the_report_keeps_its_keys_and_ratios(tmp_path: Path) -> None:
    offline = Offline.measured(200, 20.0, stages_s={"read": 0.1, "infer": 4.0}, gradable=200)
    decoding = make_decoding([DecodeCost.measured("4000x3000", 1.0, 8, 20.0, 5.0, 15.0)], offline)
    pipeline = PipelineDrain.measured(
        200,
        16.0,
        worker_peak_rss_mib_at_1000=1.0,
        worker_peak_rss_mib_at_end=2.0,
        worker_stages_s={"infer": 9.0},
        backends=COST,
    )
    served = Served(
        ingest=Ingest.measured(
            200, 0.5, api_peak_rss_mib_at_1000=1.0, api_peak_rss_mib_at_end=1.0, backends=COST
        ),
        pipeline=pipeline,
        end_to_end=Throughput.measured(200, 25.0),
        fairness=Fairness.measured(20, 200, 0.5, 0.75, 150),
        poll=[POLL],
    )
    naive = Drain.measured(100, 25.0, worker_peak_rss_mib_at_1000=1, worker_peak_rss_mib_at_end=1)
    out = tmp_path / "deep" / "bench.json"

    write_report(make_report("small", 32, ["CPU:0"], "db", offline, decoding, served, naive), out)

    report = json.loads(out.read_text())
    assert list(report) == [
        "arch",
        "batch_size",
        "cpu_cores",
        "platform",
        "tensorflow_devices",
        "scratch_database",
        "offline",
        "decoding",
        "ingest",
        "pipeline",
        "end_to_end",
        "fairness",
        "poll",
        "naive",
        "ratios",
    ]
    assert set(report["offline"]) == THROUGHPUT | {"stages_s", "gradable"}
    assert set(report["ingest"]) == THROUGHPUT | {
        "api_peak_rss_mib_at_1000",
        "api_peak_rss_mib_at_end",
        "backends",
    }
    assert set(report["pipeline"]) == DRAIN | {"worker_stages_s", "backends"}
    assert report["ingest"]["backends"] == report["pipeline"]["backends"] == asdict(COST)
    assert report["poll"] == [asdict(POLL)]
    assert set(report["naive"]) == DRAIN
    assert set(report["end_to_end"]) == THROUGHPUT
    assert report["fairness"] == {
        "small_images": 20,
        "backlog_images": 200,
        "idle_s": 0.5,
        "behind_backlog_s": 0.75,
        "backlog_left": 150,
    }
    assert report["offline"] == {
        "images": 200,
        "seconds": 20.0,
        "images_per_s": 10.0,
        "stages_s": {"read": 0.1, "infer": 4.0},
        "gradable": 200,
    }
    assert report["decoding"] == {
        "sizes": [
            {
                "size": "4000x3000",
                "share": 1.0,
                "samples": 8,
                "decode_ms": 20.0,
                "check_ms": 5.0,
                "preprocess_ms": 15.0,
                "decode_per_core": 50.0,
                "prepare_per_core": 25.0,
            }
        ],
        "mix": {
            "size": "mix",
            "share": 1.0,
            "samples": 8,
            "decode_ms": 20.0,
            "check_ms": 5.0,
            "preprocess_ms": 15.0,
            "decode_per_core": 50.0,
            "prepare_per_core": 25.0,
        },
        "model_images_per_s": 50.0,
        "cores_to_feed_model": 2.0,
    }
    assert report["ratios"] == {
        "pipeline_over_offline": 1.25,
        "pipeline_over_naive": 3.12,
        "ingest_over_pipeline": 32.0,
        "end_to_end_over_offline": 0.8,
        "behind_backlog_over_idle": 1.5,
    }


@pytest.mark.parametrize(
    ("ms_per_image", "per_core"),
    [(20.0, 50.0), (8.0, 125.0), (3.0, 333.3), (0.0, 0.0)],
)
def test_a_core_prepares_a_second_s_worth_of_images(ms_per_image: float, per_core: float) -> None:
    assert per_core_ceiling(ms_per_image) == per_core


@pytest.mark.parametrize(
    ("gpu_images_per_s", "per_core", "cores"),
    [(1000.0, 50.0, 20.0), (600.0, 45.0, 13.33), (120.0, 250.0, 0.48), (500.0, 0.0, 0.0)],
)
def test_cores_per_gpu_is_the_gpu_rate_over_a_core_s_ceiling(
    gpu_images_per_s: float, per_core: float, cores: float
) -> None:
    assert cores_per_gpu(gpu_images_per_s, per_core) == cores


def test_a_cost_splits_prepare_into_its_parts_and_ceilings() -> None:
    cost = DecodeCost.measured("3504x2336", 1 / 3, 32, 12.345, 7.0, 20.655)

    assert (cost.decode_ms, cost.check_ms, cost.preprocess_ms) == (12.35, 7.0, 20.66)
    assert cost.share == 0.333
    assert cost.decode_per_core == 81.0  # 1000 / 12.345
    assert cost.prepare_per_core == 25.0  # 1000 / 40 ms for the whole of prepare_image


def test_the_mix_is_the_average_image_not_the_average_ceiling() -> None:
    small = DecodeCost.measured("2124x2056", 0.5, 32, 10.0, 5.0, 5.0)
    large = DecodeCost.measured("4000x3000", 0.5, 32, 30.0, 5.0, 5.0)

    mix = mix_cost([small, large])

    # 20 ms on average: 50 images/s per core, not the 66.7 the ceilings' mean would say.
    assert (mix.decode_ms, mix.decode_per_core) == (20.0, 50.0)
    assert (mix.check_ms, mix.preprocess_ms, mix.prepare_per_core) == (5.0, 5.0, 33.3)
    assert (mix.size, mix.share, mix.samples) == ("mix", 1.0, 64)
    weighted = mix_cost([small, DecodeCost.measured("4000x3000", 0.25, 16, 40.0, 5.0, 5.0)])
    assert weighted.decode_ms == 20.0  # (0.5 * 10 + 0.25 * 40) / 0.75


def test_the_decoder_cores_keep_the_model_s_offline_rate_fed() -> None:
    offline = Offline.measured(
        400, 10.0, stages_s={"read": 0.2, "decode_preprocess": 6.0, "infer": 2.5}, gradable=300
    )
    cost = DecodeCost.measured("4000x3000", 1.0, 32, 15.0, 5.0, 5.0)  # 40 images/s per core

    decoding = make_decoding([cost], offline)

    assert decoding.model_images_per_s == 120.0  # only the gradable reach the model
    assert decoding.cores_to_feed_model == 3.0
    nothing_gradable = Offline.measured(4, 1.0, stages_s={"infer": 0.0}, gradable=0)
    assert make_decoding([cost], nothing_gradable).cores_to_feed_model == 0.0


@pytest.mark.parametrize(
    ("value", "sizes"),
    [
        ("model", None),
        ("real", [(2124, 2056), (3504, 2336), (4000, 3000)]),
        ("640x480", [(640, 480)]),
        ("2124x2056, 4000X3000", [(2124, 2056), (4000, 3000)]),
    ],
)
def test_sizes_are_the_model_s_the_cameras_or_listed(
    value: str, sizes: list[tuple[int, int]] | None
) -> None:
    assert parse_sizes(value) == sizes


@pytest.mark.parametrize("value", ["", "640", "640x", "x480", "640x480x3", "32x32", "-5x80"])
def test_a_size_that_is_not_wxh_is_refused(value: str) -> None:
    with pytest.raises(click.BadParameter, match="WxH"):
        parse_sizes(value)


def test_images_come_in_each_size_in_turn_framed_as_a_camera_frames_them(
    tmp_path: Path,
) -> None:
    paths = write_images(tmp_path, 7, [(640, 512), (512, 600)])

    blobs = [path.read_bytes() for path in paths]
    assert len(set(blobs)) == 7  # every file unique, so the store keeps each one
    sizes = []
    for blob in blobs:
        with Image.open(io.BytesIO(blob)) as image:
            assert image.format == "JPEG"
            sizes.append(image.size)
            pixels = np.asarray(image.convert("L"))
        # The round field of view spans the shorter side; the frame beside it is black.
        side = min(image.size)
        assert pixels[:, : (image.width - side) // 2].max(initial=0) < 20
        assert pixels[: (image.height - side) // 2].max(initial=0) < 20
        assert pixels[image.height // 2, image.width // 2] > 20
    assert sizes == [(640, 512), (512, 600)] * 3 + [(640, 512)]
    # A few distinct photographs per size, copies told apart only after the image's end.
    assert blobs[0][:-8] != blobs[2][:-8]
    assert files_by_size(paths) == {"640x512": paths[0::2], "512x600": paths[1::2]}


def test_decoding_is_sampled_per_size_with_the_worker_s_parts(tmp_path: Path) -> None:
    paths = write_images(tmp_path, 5, [(640, 512), (512, 512)])
    offline = Offline.measured(5, 1.0, stages_s={"infer": 0.5}, gradable=5)

    decoding = measure_decoding(BUNDLED_MODEL, paths, offline, samples=2)

    assert [(cost.size, cost.share, cost.samples) for cost in decoding.sizes] == [
        ("640x512", 0.6, 2),
        ("512x512", 0.4, 2),
    ]
    for cost in [*decoding.sizes, decoding.mix]:
        assert cost.decode_ms > 0 and cost.check_ms > 0 and cost.preprocess_ms > 0
        assert cost.decode_per_core == per_core_ceiling(cost.decode_ms)
    assert decoding.mix.samples == 4
    assert decoding.model_images_per_s == 10.0


def test_the_table_shows_each_size_the_mix_and_the_cores(tmp_path: Path) -> None:
    offline = Offline.measured(4, 1.0, stages_s={"infer": 0.5}, gradable=4)
    costs = [
        DecodeCost.measured("2124x2056", 0.5, 2, 10.0, 5.0, 5.0),
        DecodeCost.measured("4000x3000", 0.5, 2, 30.0, 5.0, 5.0),
    ]
    throughput = Throughput.measured(4, 1.0)
    drain = Drain.measured(4, 1.0, worker_peak_rss_mib_at_1000=1, worker_peak_rss_mib_at_end=1)
    served = Served(
        ingest=Ingest.measured(
            4, 0.1, api_peak_rss_mib_at_1000=1.0, api_peak_rss_mib_at_end=1.0, backends=COST
        ),
        pipeline=PipelineDrain(**asdict(drain), worker_stages_s={}, backends=COST),
        end_to_end=throughput,
        fairness=Fairness.measured(2, 4, 1.0, 2.0, 1),
        poll=[POLL],
    )
    report = make_report(
        "small", 4, ["CPU:0"], "db", offline, make_decoding(costs, offline), served, drain
    )
    console = Console(file=io.StringIO(), width=240)

    console.print(report_table(report))

    printed = console.file.getvalue()
    assert "decode 2124x2056" in printed and "decode 4000x3000" in printed
    assert "decode mix" in printed and "50.0 / core" in printed  # 20 ms on average
    assert "decoder cores" in printed and "0.24" in printed  # 8 img/s / 33.3 per core
    assert "server p50 0.8 ms, p99 1.5 ms, CPU p50 0.5 ms" in printed
    assert "per image: 3.5 transactions, 2.0 rows inserted" in printed
    assert "60.5 buffer pages; 0.25 Redis commands" in printed
    assert "behind another programme's 4 images (1 of them still pending" in printed


def test_the_drain_is_split_per_image_by_the_workers_stages() -> None:
    drain = PipelineDrain.measured(
        100,
        1.0,
        worker_peak_rss_mib_at_1000=1.0,
        worker_peak_rss_mib_at_end=1.0,
        worker_stages_s={
            "claim": 0.05,
            "stage": 0.02,
            "decode_wait": 0.3,
            "infer": 0.4,
            "decode_and_infer": 0.7,
            "write": 0.1,
        },
        backends=COST,
    )
    assert pipeline_ms_per_image(drain) == (
        "claim 0.50, mark batches, look up known results 0.20, wait for decoders 3.00, "
        "model 4.00, write results 1.00; outside the stages 1.30 (of 10.00 ms)"
    )


def _bench_databases(server_url: str) -> set[str]:
    engine = create_engine(server_url)
    with engine.connect() as connection:
        names = connection.scalars(
            text("SELECT datname FROM pg_database WHERE datname LIKE 'retinaq_bench_%'")
        ).all()
    engine.dispose()
    return set(names)


def _run_bench(
    postgres_server_url: str, redis_url: str, out: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETINAQ_")}
    return subprocess.run(
        [sys.executable, "-m", "cli", "bench", *args, "--out", str(out)],
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


@pytest.mark.slow
def test_bench_measures_every_figure_and_cleans_up(
    postgres_server_url: str, redis_url: str, tmp_path: Path
) -> None:
    before = _bench_databases(postgres_server_url)
    out = tmp_path / "bench.json"
    completed = _run_bench(
        postgres_server_url,
        redis_url,
        out,
        *("--n", "12", "--naive-n", "3", "--offline-n", "8", "--batch-size", "4"),
        *("--poll-rows", "200,400", "--poll-seconds", "0.5"),
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["cpu_cores"] == os.cpu_count()
    assert report["tensorflow_devices"]
    for section in ("offline", "ingest", "pipeline", "naive", "end_to_end"):
        assert report[section]["images_per_s"] > 0, section
    assert (report["offline"]["images"], report["pipeline"]["images"]) == (8, 12)
    assert report["naive"]["images"] == 3
    assert set(report["offline"]["stages_s"]) == {"read", "decode_preprocess", "infer"}
    # Summed from the worker's task reports, not its log.
    assert {"decode_wait", "infer", "write"} <= set(report["pipeline"]["worker_stages_s"])
    # Every one of the 20 pollers sends at least one request, however short the run.
    small, large = report["poll"]
    assert (small["rows"], large["rows"]) == (200, 400)
    for poll in (small, large):
        assert poll["requests"] >= poll["pollers"] == 20
        assert poll["p99_ms"] >= poll["p50_ms"] > 0
        # The application's own time is part of what the client waited for.
        assert 0 < poll["server_p50_ms"] <= poll["p50_ms"]
        assert poll["server_p99_ms"] >= poll["server_p50_ms"] >= poll["server_cpu_p50_ms"] * 0.5
    for stage in ("ingest", "pipeline"):
        cost = report[stage]["backends"]
        assert cost["images"] >= 12 and cost["transactions"] > 0, cost
        assert cost["rows_inserted"] >= 1 and cost["buffer_accesses"] > 0, cost
        assert cost["redis_commands"] > 0, cost  # a task per upload, claimed by the worker
    assert report["pipeline"]["backends"]["rows_updated"] >= 1  # claims and their moves
    assert set(report["ratios"]) == {
        "pipeline_over_offline",
        "pipeline_over_naive",
        "ingest_over_pipeline",
        "end_to_end_over_offline",
        "behind_backlog_over_idle",
    }
    fairness = report["fairness"]
    assert fairness["backlog_images"] == fairness["small_images"] == 12  # --n, under 20
    assert fairness["idle_s"] > 0 and fairness["behind_backlog_s"] > 0
    assert 0 <= fairness["backlog_left"] <= 12
    assert "pipeline_over_offline" in completed.stdout
    # Only this run's database: another run on the same server may hold one of its own.
    assert report["scratch_database"].startswith("retinaq_bench_")
    assert report["scratch_database"] not in before
    assert report["scratch_database"] not in _bench_databases(postgres_server_url), (
        "the scratch database was dropped"
    )
    # The model's own square photographs, one size, all of it sampled for decoding.
    assert [cost["size"] for cost in report["decoding"]["sizes"]] == ["512x512"]
    assert report["decoding"]["mix"]["samples"] == 12


@pytest.mark.slow
def test_bench_at_camera_sizes_reports_decode_cost_by_size(
    postgres_server_url: str, redis_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    completed = _run_bench(
        postgres_server_url,
        redis_url,
        out,
        *("--sizes", "real", "--n", "4", "--naive-n", "1", "--batch-size", "4"),
        *("--poll-rows", "50", "--poll-seconds", "0.2"),
    )

    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["offline"]["images"] == report["pipeline"]["images"] == 4
    assert report["offline"]["gradable"] == 4  # the camera's framing passes the check
    decoding = report["decoding"]
    # The 4 files of the main set: each camera size in turn.
    assert [(cost["size"], cost["samples"]) for cost in decoding["sizes"]] == [
        ("2124x2056", 2),
        ("3504x2336", 1),
        ("4000x3000", 1),
    ]
    for cost in [*decoding["sizes"], decoding["mix"]]:
        assert cost["decode_ms"] > 0 and cost["preprocess_ms"] > 0, cost
        assert cost["decode_per_core"] >= cost["prepare_per_core"] > 0, cost
    assert decoding["mix"]["share"] == 1.0
    assert decoding["model_images_per_s"] > 0
    assert decoding["cores_to_feed_model"] > 0
    for row in ("decode 2124x2056", "decode 4000x3000", "decode mix", "decoder cores"):
        assert row in completed.stdout, row


@pytest.mark.parametrize(
    ("value", "rows"),
    [("2000", [2000]), ("2000,100000,1000000", [2000, 100_000, 1_000_000]), ("1_000", [1000])],
)
def test_poll_rows_are_one_size_or_a_list(value: str, rows: list[int]) -> None:
    assert parse_rows(value) == rows


@pytest.mark.parametrize("value", ["", "many", "5", "100,x", "100,,200"])
def test_poll_rows_refuse_anything_else(value: str) -> None:
    with pytest.raises(click.BadParameter):
        parse_rows(value)


def test_the_server_timing_of_a_poll_is_read_from_the_api_header() -> None:
    assert server_timing("app;dur=1.25, cpu;dur=0.50") == (1.25, 0.5)
    assert server_timing('cpu;dur=2;desc="x", app;dur=3') == (3.0, 2.0)
    for broken in ("", "app;dur=1.0", "total;dur=4"):
        with pytest.raises(click.ClickException):
            server_timing(broken)


def test_a_drain_follows_the_workers_reports_not_the_database(tmp_path: Path) -> None:
    path = tmp_path / "tasks.jsonl"
    assert images_handled(path) == 0, "no report yet"
    append_task_report(path, GradingReport(graded=30, ungradable=1, failed=1, skipped=4))
    append_task_report(path, GradingReport(graded=8))
    with path.open("a") as file:
        file.write('{"graded": 5, "ungr')  # a line still being written
    assert images_handled(path) == 40


def test_a_worker_that_exits_at_start_fails_the_stage_at_once(tmp_path: Path) -> None:
    servers = Servers(
        "postgresql+psycopg://nobody@127.0.0.1:1/none",
        {"RETINAQ_BROKER_URL": "redis://x"},
        tmp_path,
    )
    servers.worker_log("e2e").write_text("Error: database is at revision 0009 but ...\n")
    exited = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    exited.wait()
    started = time.monotonic()
    with pytest.raises(click.ClickException, match="the worker exited at start"):
        servers.wait_worker_ready(exited, "e2e")
    assert time.monotonic() - started < 5, "not after the 300 s readiness timeout"


@pytest.mark.slow
def test_bench_poll_reports_the_servers_own_time_for_each_batch_size(
    postgres_server_url: str, redis_url: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETINAQ_")}
    completed = subprocess.run(
        [sys.executable, "-m", "cli", "bench-poll", "--rows", "50,400", "--requests", "5"],
        env={
            **env,
            "RETINAQ_BENCH_DATABASE_URL": postgres_server_url,
            "RETINAQ_BENCH_BROKER_URL": redis_url,
        },
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    lines = [line for line in completed.stdout.splitlines() if "rows: server wall" in line]
    assert [line.split()[0] for line in lines] == ["50", "400"]
    for line in lines:
        wall_p50, wall_p99, cpu_p50 = (float(x) for x in re.findall(r"([\d.]+) ms", line))
        assert 0 < cpu_p50 and 0 < wall_p50 <= wall_p99, line
