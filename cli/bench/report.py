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
    gradable: int  # images the quality check passed to the model


@dataclass(frozen=True)
class DecodeCost:
    """One core's CPU milliseconds per image of one size, by part of ``prepare_image``,
    and the images per second one core can therefore decode, and prepare."""

    size: str  # WxH, or "mix" for the run's files as a whole
    share: float  # of the run's files
    samples: int
    decode_ms: float
    check_ms: float
    preprocess_ms: float
    decode_per_core: float  # the decode-bound ceiling, images/s
    prepare_per_core: float  # decode, check and preprocess: a decoder thread's whole work

    @classmethod
    def measured(
        cls,
        size: str,
        share: float,
        samples: int,
        decode_ms: float,
        check_ms: float,
        preprocess_ms: float,
    ) -> Self:
        """Milliseconds to a hundredth, and the ceilings those rounded figures give (to a
        tenth of an image per second), so the JSON agrees with itself."""
        decode, check, preprocess = (round(ms, 2) for ms in (decode_ms, check_ms, preprocess_ms))
        return cls(
            size,
            round(share, 3),
            samples,
            decode,
            check,
            preprocess,
            per_core_ceiling(decode),
            per_core_ceiling(decode + check + preprocess),
        )


@dataclass(frozen=True)
class Decoding:
    """Decode cost by photograph size and for the run's mix, and the decoder cores that
    would keep this run's model busy."""

    sizes: list[DecodeCost]
    mix: DecodeCost
    model_images_per_s: float  # the offline loop's images through the model / its infer s
    cores_to_feed_model: float


@dataclass(frozen=True)
class BackendCost:
    """PostgreSQL's and Redis' work per image over a stage (:mod:`cli.bench.backends`)."""

    images: int
    transactions: float
    rows_inserted: float
    rows_updated: float
    rows_deleted: float
    buffer_accesses: float  # pages touched, hit or read: grows if a plan scans more
    redis_commands: float  # every client of the server: an upper bound on a shared one


@dataclass(frozen=True)
class Ingest(Throughput):
    """Uploads through the API with no worker running, the API's memory and the work per
    image of PostgreSQL and Redis."""

    api_peak_rss_mib_at_1000: float
    api_peak_rss_mib_at_end: float
    backends: BackendCost


@dataclass(frozen=True)
class Drain(Throughput):
    """A worker grading what was uploaded: first claim to last result, and its memory."""

    worker_peak_rss_mib_at_1000: float
    worker_peak_rss_mib_at_end: float


@dataclass(frozen=True)
class PipelineDrain(Drain):
    """A drain with the worker's own stage totals, summed from its task reports, and the
    work per image graded of PostgreSQL and Redis."""

    worker_stages_s: dict[str, float]
    backends: BackendCost


@dataclass(frozen=True)
class Poll:
    """Latency of the batch status endpoint under concurrent pollers, as the clients saw it
    and as the application spent it (its ``Server-Timing``: wall clock and CPU)."""

    rows: int
    pollers: int
    requests: int
    p50_ms: float
    p99_ms: float
    server_p50_ms: float
    server_p99_ms: float
    server_cpu_p50_ms: float


@dataclass(frozen=True)
class Fairness:
    """A small batch behind another programme's backlog, against the same batch idle."""

    small_images: int
    backlog_images: int
    idle_s: float
    behind_backlog_s: float
    backlog_left: int  # the backlog's images still pending when the small batch finished

    @classmethod
    def measured(cls, small: int, backlog: int, idle_s: float, behind_s: float, left: int) -> Self:
        """Seconds to the millisecond."""
        return cls(small, backlog, round(idle_s, 3), round(behind_s, 3), left)


@dataclass(frozen=True)
class Ratios:
    """The figures to compare between runs: both sides measured in this one."""

    pipeline_over_offline: float
    pipeline_over_naive: float
    ingest_over_pipeline: float
    end_to_end_over_offline: float
    behind_backlog_over_idle: float  # fairness: 1 is perfect, the backlog/batch ratio is FIFO


@dataclass(frozen=True)
class Served:
    """The figures measured against one API server."""

    ingest: Ingest
    pipeline: PipelineDrain
    end_to_end: Throughput
    fairness: Fairness
    poll: list[Poll]  # one per --poll-rows size


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
    decoding: Decoding
    ingest: Ingest
    pipeline: PipelineDrain
    end_to_end: Throughput
    fairness: Fairness
    poll: list[Poll]  # one per --poll-rows size
    naive: Drain
    ratios: Ratios


def make_report(
    arch: str,
    batch_size: int,
    devices: list[str],
    scratch_database: str,
    offline: Offline,
    decoding: Decoding,
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
        decoding=decoding,
        ingest=served.ingest,
        pipeline=served.pipeline,
        end_to_end=served.end_to_end,
        fairness=served.fairness,
        poll=served.poll,
        naive=naive,
        ratios=ratios(offline, served, naive),
    )


def per_core_ceiling(ms_per_image: float) -> float:
    """Images per second one core sustains at ``ms_per_image`` of CPU each."""
    return round(1000 / ms_per_image, 1) if ms_per_image > 0 else 0.0


def cores_per_gpu(gpu_images_per_s: float, per_core: float) -> float:
    """Cores whose decoding keeps a device grading ``gpu_images_per_s`` busy."""
    return round(gpu_images_per_s / per_core, 2) if per_core > 0 else 0.0


def mix_cost(sizes: list[DecodeCost]) -> DecodeCost:
    """The run's files as a whole: each size's milliseconds weighted by its share, so the
    ceiling is that of the average image (not the average of the ceilings)."""
    total = sum(cost.share for cost in sizes)
    return DecodeCost.measured(
        "mix",
        total,
        sum(cost.samples for cost in sizes),
        sum(cost.share * cost.decode_ms for cost in sizes) / total,
        sum(cost.share * cost.check_ms for cost in sizes) / total,
        sum(cost.share * cost.preprocess_ms for cost in sizes) / total,
    )


def make_decoding(sizes: list[DecodeCost], offline: Offline) -> Decoding:
    """The sizes, their mix, and the decoder cores the offline loop's model rate needs."""
    mix = mix_cost(sizes)
    infer_s = offline.stages_s.get("infer", 0.0)
    model_rate = round(offline.gradable / infer_s, 2) if infer_s > 0 else 0.0
    return Decoding(sizes, mix, model_rate, cores_per_gpu(model_rate, mix.prepare_per_core))


def ratios(offline: Throughput, served: Served, naive: Throughput) -> Ratios:
    """Figures divided within one run, so a noisy machine moves them less."""
    pipeline, fairness = served.pipeline, served.fairness
    return Ratios(
        pipeline_over_offline=round(pipeline.images_per_s / offline.images_per_s, 3),
        pipeline_over_naive=round(pipeline.images_per_s / naive.images_per_s, 2),
        ingest_over_pipeline=round(served.ingest.images_per_s / pipeline.images_per_s, 2),
        end_to_end_over_offline=round(served.end_to_end.images_per_s / offline.images_per_s, 3),
        behind_backlog_over_idle=round(fairness.behind_backlog_s / fairness.idle_s, 2),
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
    table.add_row("pipeline ms/image", "", "", "", pipeline_ms_per_image(report.pipeline))
    for poll in report.poll:
        table.add_row(
            "poll",
            str(poll.rows),
            "",
            "",
            f"p50 {poll.p50_ms} ms, p99 {poll.p99_ms} ms ({poll.requests} requests); "
            f"server p50 {poll.server_p50_ms} ms, p99 {poll.server_p99_ms} ms, "
            f"CPU p50 {poll.server_cpu_p50_ms} ms",
        )
    for name, stage in (("ingest", report.ingest), ("pipeline", report.pipeline)):
        cost = stage.backends
        table.add_row(
            f"backends/{name}",
            str(cost.images),
            "",
            "",
            f"per image: {cost.transactions} transactions, {cost.rows_inserted} rows "
            f"inserted, {cost.rows_updated} updated, {cost.rows_deleted} deleted, "
            f"{cost.buffer_accesses} buffer pages; {cost.redis_commands} Redis commands",
        )
    fairness = report.fairness
    table.add_row(
        "fairness",
        str(fairness.small_images),
        f"{fairness.idle_s} / {fairness.behind_backlog_s}",
        "",
        f"a small batch idle / behind another programme's {fairness.backlog_images} images "
        f"({fairness.backlog_left} of them still pending when it finished)",
    )
    for name, value in asdict(report.ratios).items():
        table.add_row(name, "", "", str(value), "")
    decoding = report.decoding
    costs = decoding.sizes + ([decoding.mix] if len(decoding.sizes) > 1 else [])
    for cost in costs:
        table.add_row(
            f"decode {cost.size}",
            str(cost.samples),
            "",
            f"{cost.decode_per_core} / core",
            f"decode {cost.decode_ms} + check {cost.check_ms} + preprocess "
            f"{cost.preprocess_ms} ms: {cost.prepare_per_core} img/s per core prepared",
        )
    table.add_row(
        "decoder cores",
        "",
        "",
        str(decoding.cores_to_feed_model),
        f"to keep the model fed at its offline {decoding.model_images_per_s} img/s",
    )
    return table


WORKER_STAGES = (
    ("claim", "claim"),
    ("stage", "mark batches, look up known results"),
    ("decode_wait", "wait for decoders"),
    ("infer", "model"),
    ("write", "write results"),
)


def pipeline_ms_per_image(pipeline: PipelineDrain) -> str:
    """Where each millisecond of the drain went, per image: the worker's stages from its
    reports, and the rest (the queue, Celery, the tasks' own overhead) as what is left."""
    images = max(pipeline.images, 1)
    stages = pipeline.worker_stages_s
    wall_ms = pipeline.seconds * 1000 / images
    parts = [f"{label} {stages.get(key, 0.0) * 1000 / images:.2f}" for key, label in WORKER_STAGES]
    inside = sum(stages.get(key, 0.0) for key in ("claim", "stage", "decode_and_infer", "write"))
    outside = wall_ms - inside * 1000 / images
    return f"{', '.join(parts)}; outside the stages {outside:.2f} (of {wall_ms:.2f} ms)"


def _worker_rss(drain: Drain) -> str:
    return (
        f"worker RSS {drain.worker_peak_rss_mib_at_1000} → {drain.worker_peak_rss_mib_at_end} MiB"
    )


def _api_rss(ingest: Ingest) -> str:
    return f"API RSS {ingest.api_peak_rss_mib_at_1000} → {ingest.api_peak_rss_mib_at_end} MiB"
