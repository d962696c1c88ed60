"""PostgreSQL's and Redis' work per image in a stage, from their own counters.

``pg_stat_database`` counts, for the scratch database, committed transactions, rows
inserted, updated and deleted, and buffer accesses (hits and reads: every page a query
touched, so a plan that scans more as tables grow shows here first). Divided by the images
a stage handled, they should stay flat from 2,000 images to 100,000: work that grows with
the table would show as a rising figure. A backend reports its counters when it goes
idle, at most every ten seconds, or when it exits; a stage whose clients stay connected
(the API) is therefore read after that interval. Redis counts every command it served
(``INFO stats``), from any client of that server, so the figure is an upper bound on a
shared server.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis
from sqlalchemy import Engine, text

from cli.bench.report import BackendCost

STATS_FLUSH_S = 11.0  # PostgreSQL 15+ reports an idle backend's counters within 10 s

_COUNTERS = (
    "xact_commit",
    "tup_inserted",
    "tup_updated",
    "tup_deleted",
    "blks_hit",
    "blks_read",
)


@dataclass(frozen=True)
class Counters:
    """The scratch database's and the broker's cumulative counters at one moment."""

    values: dict[str, int]

    @classmethod
    def read(cls, engine: Engine, broker_url: str, *, settle: bool = False) -> Counters:
        """The counters now; with ``settle``, after connected backends have reported."""
        if settle:
            time.sleep(STATS_FLUSH_S)
        client = redis.Redis.from_url(broker_url)
        try:
            commands = int(client.info("stats")["total_commands_processed"])
        finally:
            client.close()
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_stat_clear_snapshot()"))
            row = connection.execute(
                text(
                    f"SELECT {', '.join(_COUNTERS)} FROM pg_stat_database "
                    "WHERE datname = current_database()"
                )
            ).one()
        values = dict(zip(_COUNTERS, (int(v or 0) for v in row), strict=True))
        return cls({**values, "redis_commands": commands})


def per_image(before: Counters, after: Counters, images: int) -> BackendCost:
    """What the database and the broker did between the two readings, per image handled."""
    delta = {name: after.values[name] - before.values[name] for name in after.values}
    n = max(images, 1)
    return BackendCost(
        images=images,
        transactions=round(delta["xact_commit"] / n, 3),
        rows_inserted=round(delta["tup_inserted"] / n, 2),
        rows_updated=round(delta["tup_updated"] / n, 2),
        rows_deleted=round(delta["tup_deleted"] / n, 2),
        buffer_accesses=round((delta["blks_hit"] + delta["blks_read"]) / n, 1),
        redis_commands=round(delta["redis_commands"] / n, 3),
    )
