"""The benchmark's figures as data, the ratios between them, and how they are shown.

Each stage returns one of these dataclasses; the JSON report is their ``asdict``, so its
keys are the field names below.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self

from rich.table import Table


@dataclass(frozen=True)
class Throughput:
    """Images through a stage in a wall-clock time."""

    images: int
    seconds: float
    images_per_s: float

    @classmethod
    def measured(cls, images: int, seconds: float, **extra: Any) -> Self:
        """Seconds to the millisecond, the rate to two decimals, as the report always had."""
        return cls(images, round(seconds, 3), round(images / seconds, 2), **extra)


@dataclass(frozen=True)
class Offline(Throughput):
    """The ceiling: the worker's per-image work in one tight loop, by stage."""

    stages_s: dict[str, float]


@dataclass(frozen=True)
class Ingest(Throughput):
    """Uploads through the API with no worker running, and the API's memory."""

    api_peak_rss_mib_at_1000: float
    api_peak_rss_mib_at_end: float


@dataclass(frozen=True)
class Drain(Throughput):
    """A worker grading what was uploaded: first claim to last result, and its memory."""

    worker_peak_rss_mib_at_1000: float
    worker_peak_rss_mib_at_end: float


@dataclass(frozen=True)
class PipelineDrain(Drain):
    """A drain with the worker's own stage totals, summed from its task reports."""

    worker_stages_s: dict[str, float]


@dataclass(frozen=True)
class Poll:
    """Latency of the batch status endpoint under concurrent pollers."""

    rows: int
    pollers: int
    requests: int
    p50_ms: float
    p99_ms: float


@dataclass(frozen=True)
class Ratios:
    """The figures to compare between runs: both sides measured in this one."""

    pipeline_over_offline: float
    pipeline_over_naive: float
    ingest_over_pipeline: float
    end_to_end_over_offline: float


@dataclass(frozen=True)
class Served:
    """The figures measured against one API server."""

    ingest: Ingest
    pipeline: PipelineDrain
    end_to_end: Throughput
    poll: Poll


@dataclass(frozen=True)
class Report:
    """One run: the machine, every stage's figures and their ratios."""

    arch: str
    batch_size: int
    cpu_cores: int | None
    platform: str
    tensorflow_devices: list[str]
    scratch_database: str  # so a caller can check that this run's database was dropped
    offline: Offline
    ingest: Ingest
    pipeline: PipelineDrain
    end_to_end: Throughput
    poll: Poll
    naive: Drain
    ratios: Ratios


def make_report(
    arch: str,
    batch_size: int,
    devices: list[str],
    scratch_database: str,
    offline: Offline,
    served: Served,
    naive: Drain,
) -> Report:
    """This machine, every stage's figures, and the ratios between them."""
    return Report(
        arch=arch,
        batch_size=batch_size,
        cpu_cores=os.cpu_count(),
        platform=platform.platform(),
        tensorflow_devices=devices,
        scratch_database=scratch_database,
        offline=offline,
        ingest=served.ingest,
        pipeline=served.pipeline,
        end_to_end=served.end_to_end,
        poll=served.poll,
        naive=naive,
        ratios=ratios(offline, served.pipeline, naive, served.ingest, served.end_to_end),
    )


def ratios(
    offline: Throughput,
    pipeline: Throughput,
    naive: Throughput,
    ingest: Throughput,
    end_to_end: Throughput,
) -> Ratios:
    """Throughputs divided within one run, so a noisy machine moves them less."""
    return Ratios(
        pipeline_over_offline=round(pipeline.images_per_s / offline.images_per_s, 3),
        pipeline_over_naive=round(pipeline.images_per_s / naive.images_per_s, 2),
        ingest_over_pipeline=round(ingest.images_per_s / pipeline.images_per_s, 2),
        end_to_end_over_offline=round(end_to_end.images_per_s / offline.images_per_s, 3),
    )


def write_report(report: Report, out: Path) -> None:
    """The report as indented JSON, its folder made if needed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(asdict(report), indent=2) + "\n")


def report_table(report: Report) -> Table:
    """The printed summary: one row per measurement, then the ratios."""
    table = Table(
        title=f"retinaq bench: {report.arch}, batch {report.batch_size}, "
        f"{report.cpu_cores} cores, devices {', '.join(report.tensorflow_devices)}"
    )
    for column in ("measurement", "images", "seconds", "img/s", "notes"):
        table.add_column(column)
    rows: list[tuple[str, Throughput, str]] = [
        ("offline", report.offline, f"stages {report.offline.stages_s}"),
        ("pipeline", report.pipeline, _worker_rss(report.pipeline)),
        ("naive", report.naive, _worker_rss(report.naive)),
        ("end_to_end", report.end_to_end, ""),
        ("ingest", report.ingest, _api_rss(report.ingest)),
    ]
    for name, row, notes in rows:
        table.add_row(name, str(row.images), str(row.seconds), str(row.images_per_s), notes)
    poll = report.poll
    table.add_row(
        "poll",
        str(poll.rows),
        "",
        "",
        f"p50 {poll.p50_ms} ms, p99 {poll.p99_ms} ms ({poll.requests} requests)",
    )
    for name, value in asdict(report.ratios).items():
        table.add_row(name, "", "", str(value), "")
    return table


def _worker_rss(drain: Drain) -> str:
    return (
        f"worker RSS {drain.worker_peak_rss_mib_at_1000} → {drain.worker_peak_rss_mib_at_end} MiB"
    )


def _api_rss(ingest: Ingest) -> str:
    return f"API RSS {ingest.api_peak_rss_mib_at_1000} → {ingest.api_peak_rss_mib_at_end} MiB"
