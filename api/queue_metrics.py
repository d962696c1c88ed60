"""The queue as PostgreSQL, the source of truth, sees it: pending images and the age of the
oldest, per programme and in total, read once per scrape of the API's ``/metrics``.

Why the API and not the reconciler: every deployment runs and scrapes the API already, it
holds a database engine, and its answer is read at scrape time, so the figures are never
older than the scrape; the reconciler serves no HTTP and would report its last pass. With
several API replicas each reports the same figures: aggregate them with ``max``, not
``sum`` (the dashboards and rules in ``deploy/monitoring`` do).

Why it is cheap at a million rows: nothing counts images. The counts are the per-batch
counter rows (``batch_stats``, kept by triggers) summed over the batches not yet finished;
the oldest queued image of each programme is one probe of the partial index of queued
images (``ix_images_queued_programme_id_id``: uuid7 ids, so the first is the oldest); the
oldest image in processing comes from the rows in processing alone
(``ix_images_state_lease_expires_at``), which are the images in workers' hands. All of it
in one read-only transaction with a statement timeout, so a slow database costs a scrape
a gap (``retinaq_queue_up 0``), never a hung scrape.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Connection, Engine, func, select, text

from common.db.tables import (
    FINISHED_BATCH_STATES,
    Batch,
    BatchStat,
    Image,
    ImageState,
    Programme,
)

log = logging.getLogger(__name__)

QUERY_TIMEOUT_MS = 2000


@dataclass
class ProgrammeQueue:
    """One programme's pending work."""

    name: str
    queued: int = 0
    processing: int = 0
    oldest: datetime | None = None  # the oldest pending image's upload

    @property
    def pending(self) -> int:
        """Queued and processing: the work not yet finished."""
        return self.queued + self.processing


@dataclass
class QueueSnapshot:
    """Every programme's pending work at one moment."""

    taken_at: datetime
    programmes: dict[uuid.UUID, ProgrammeQueue] = field(default_factory=dict)

    def age_s(self, oldest: datetime | None) -> float:
        """Seconds since ``oldest`` (0 when nothing is pending)."""
        if oldest is None:
            return 0.0
        return max(0.0, (self.taken_at - _aware(oldest)).total_seconds())


def read_queue(connection: Connection) -> QueueSnapshot:
    """Pending counts from the counter rows, oldest images from two index reads."""
    snapshot = QueueSnapshot(datetime.now(UTC))
    # One probe of the partial index per programme, in the statement that lists them.
    oldest_queued = (
        select(Image.created_at)
        .where(Image.programme_id == Programme.id, Image.state == ImageState.QUEUED)
        .order_by(Image.id)
        .limit(1)
        .scalar_subquery()
    )
    listed = connection.execute(select(Programme.id, Programme.name, oldest_queued))
    for programme_id, name, oldest in listed:
        snapshot.programmes[programme_id] = ProgrammeQueue(name, oldest=oldest)
    counts = connection.execute(
        select(Batch.programme_id, BatchStat.stat, func.sum(BatchStat.value))
        .join(BatchStat, BatchStat.batch_id == Batch.id)
        .where(
            Batch.state.not_in(FINISHED_BATCH_STATES),
            BatchStat.stat.in_([ImageState.QUEUED.value, ImageState.PROCESSING.value]),
        )
        .group_by(Batch.programme_id, BatchStat.stat)
    )
    for programme_id, stat, value in counts:
        queue = snapshot.programmes.get(programme_id)
        if queue is not None:
            setattr(queue, stat, int(value or 0))
    processing = connection.execute(
        select(Image.programme_id, func.min(Image.created_at))
        .where(Image.state == ImageState.PROCESSING)
        .group_by(Image.programme_id)
    )
    for programme_id, oldest in processing:
        queue = snapshot.programmes.get(programme_id)
        if queue is not None and (queue.oldest is None or _aware(oldest) < _aware(queue.oldest)):
            queue.oldest = oldest
    return snapshot


def _aware(moment: datetime) -> datetime:
    """SQLite hands timestamps back naive; every timestamp we write is UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class QueueCollector(Collector):
    """A custom collector: the queue's gauges, read from the database at each scrape."""

    def __init__(self, engine: Engine, timeout_ms: int = QUERY_TIMEOUT_MS) -> None:
        self.engine = engine
        self.timeout_ms = timeout_ms

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The families, without reading the database at registration."""
        yield from self._families()
        yield from self._health(True, time.perf_counter())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Read the queue; on failure only ``retinaq_queue_up 0`` and the time it took."""
        started = time.perf_counter()
        try:
            with self.engine.connect() as connection:
                if connection.dialect.name == "postgresql":
                    connection.execute(text(f"SET LOCAL statement_timeout = {self.timeout_ms:d}"))
                snapshot = read_queue(connection)
                connection.rollback()
        except Exception as error:
            log.warning("queue metrics: the database did not answer: %s", type(error).__name__)
            yield from self._health(False, started)
            return
        families = self._families()
        programmes, pending, queued, processing, oldest, total_pending, total_oldest = families
        for programme_id, queue in snapshot.programmes.items():
            label = str(programme_id)
            programmes.add_metric([label, queue.name], 1)
            pending.add_metric([label], queue.pending)
            queued.add_metric([label], queue.queued)
            processing.add_metric([label], queue.processing)
            oldest.add_metric([label], snapshot.age_s(queue.oldest))
        total_pending.add_metric([], sum(q.pending for q in snapshot.programmes.values()))
        total_oldest.add_metric(
            [], max((snapshot.age_s(q.oldest) for q in snapshot.programmes.values()), default=0)
        )
        yield from families
        yield from self._health(True, started)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        by_programme = ["programme_id"]
        return (
            GaugeMetricFamily(
                "retinaq_programme_info",
                "Always 1: a programme's name, to join onto the series labelled by its id.",
                labels=["programme_id", "programme"],
            ),
            GaugeMetricFamily(
                "retinaq_queue_pending_images",
                "Images queued or processing, per programme.",
                labels=by_programme,
            ),
            GaugeMetricFamily(
                "retinaq_queue_queued_images",
                "Images waiting for a worker, per programme.",
                labels=by_programme,
            ),
            GaugeMetricFamily(
                "retinaq_queue_processing_images",
                "Images claimed by a worker and not yet recorded, per programme.",
                labels=by_programme,
            ),
            GaugeMetricFamily(
                "retinaq_queue_oldest_pending_age_seconds",
                "Seconds since the oldest pending image was uploaded (0: none), per programme.",
                labels=by_programme,
            ),
            GaugeMetricFamily(
                "retinaq_queue_all_pending_images",
                "Images queued or processing, all programmes together.",
            ),
            GaugeMetricFamily(
                "retinaq_queue_all_oldest_pending_age_seconds",
                "Seconds since the oldest pending image of any programme was uploaded (0: none).",
            ),
        )

    @staticmethod
    def _health(up: bool, started: float) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "retinaq_queue_up",
            "1 when the last scrape read the queue from the database, 0 when it could not.",
            value=1 if up else 0,
        )
        yield GaugeMetricFamily(
            "retinaq_queue_scrape_duration_seconds",
            "How long reading the queue from the database took in this scrape.",
            value=time.perf_counter() - started,
        )
