"""Break things for real: kill -9 workers, wipe Redis, restart PostgreSQL, SIGTERM a worker.

Each test runs the API, the reconciler and a worker as real processes on a private
PostgreSQL and Redis, submits 300 images over HTTP, breaks something mid-run, and then
checks that every image was graded exactly once.

The ``kill -9`` test runs on both stores, a folder and a bucket in a private S3 server: it is
the one whose outcome the store can change (a worker killed while it reads photographs,
then heat maps drawn from them and written back by the worker that takes over). The others
break PostgreSQL, Redis or the worker's shutdown, which the store has no part in, so they
run on the folder only, which keeps the module to a few minutes.
"""

from __future__ import annotations

import io
import random
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from common.access.apikeys import create_programme
from common.db.tables import Image, ImageState, Result, utcnow
from lab.synthetic import generate_fundus
from tests.support import STORES

pytestmark = pytest.mark.slow

IMAGES = 300
# A killed worker's last renewal was at most a third of a lease before the kill, so its
# claims run out within one default lease (45 s) and the next reconciler pass (every 10 s)
# hands them back: "about a minute", with room for a slow pass on a busy machine.
RECOVERY_S = 65.0
# A broker that lost its data is noticed by the reconciler's next pass (every 10 s), which
# re-sends every queued image whatever its age: seconds, not the ten minutes of
# requeue_after_s, with room for Redis's restart and a slow pass on a busy machine.
WIPE_RECOVERY_S = 25.0


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    """300 distinct synthetic photographs (distinct bytes, so none is deduplicated)."""
    out = []
    for i in range(IMAGES):
        buffer = io.BytesIO()
        generate_fundus(i % 5, 1000 + i, 384).save(buffer, format="JPEG", quality=88)
        out.append(buffer.getvalue())
    return out


def _api_key(database_url: str) -> dict[str, str]:
    engine = create_engine(database_url)
    with Session(engine) as session, session.begin():
        _, key = create_programme(session, "Fault injection")
    engine.dispose()
    return {"Authorization": f"Bearer {key.secret}"}


def _submit(stack: Any, headers: dict[str, str], jpegs: list[bytes]) -> str:
    with httpx.Client(base_url=stack.api_url, headers=headers, timeout=120) as http:
        created = http.post("/v1/batches", json={"open": True, "reference": "faults"})
        assert created.status_code == 201, created.text
        links = created.json()["links"]
        for start in range(0, len(jpegs), 100):
            files = [
                ("images", (f"img{start + i:03d}.jpg", data, "image/jpeg"))
                for i, data in enumerate(jpegs[start : start + 100])
            ]
            added = http.post(links["add_images"], files=files)
            assert added.status_code == 202, added.text
        assert http.post(links["close"]).status_code == 200
        return created.headers["Location"]


def _count(database_url: str, *states: ImageState) -> int:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return int(
                connection.scalar(
                    select(func.count()).select_from(Image).where(Image.state.in_(states))
                )
                or 0
            )
    except Exception:
        return -1
    finally:
        engine.dispose()


def _finished(database_url: str) -> Callable[[], bool]:
    return lambda: _count(database_url, ImageState.QUEUED, ImageState.PROCESSING) == 0


def _assert_graded_exactly_once(database_url: str, status_url: str, headers: dict) -> None:
    engine = create_engine(database_url)
    with engine.connect() as connection:
        states = dict(
            connection.execute(select(Image.state, func.count()).group_by(Image.state)).all()
        )
        results = connection.scalar(select(func.count()).select_from(Result))
        distinct = connection.scalar(select(func.count(func.distinct(Result.image_id))))
    engine.dispose()
    assert states == {ImageState.GRADED.value: IMAGES}, states
    assert results == distinct == IMAGES
    body = httpx.get(status_url, headers=headers, timeout=30).json()
    assert body["state"] == "completed"
    assert body["counts"]["graded"] == IMAGES


def _queued_before(database_url: str, moment: datetime) -> int:
    """Images waiting on a task sent before ``moment`` (by this host's clock, which the
    reconciler's re-sends are stamped with too)."""
    engine = create_engine(database_url)
    with engine.connect() as connection:
        count = connection.scalar(
            select(func.count())
            .select_from(Image)
            .where(Image.state == ImageState.QUEUED, Image.enqueued_at < moment)
        )
    engine.dispose()
    return int(count or 0)


def _heatmaps(database_url: str) -> tuple[int, list[str]]:
    """How many results asked for a heat map, and the heat maps made so far."""
    engine = create_engine(database_url)
    with engine.connect() as connection:
        asked = connection.scalar(
            select(func.count()).where(Result.heatmap_requested_at.is_not(None))
        )
        made = connection.scalars(
            select(Result.heatmap_sha256).where(Result.heatmap_sha256.is_not(None))
        ).all()
    engine.dispose()
    return int(asked or 0), [str(sha) for sha in made]


@dataclass
class Kill:
    """One ``kill -9``: when, the claims it stranded, and when they were back in work."""

    at: float
    claims: set[tuple[uuid.UUID, int]]
    recovered_after_s: float | None = None


def _dead_claims(database_url: str, earlier: list[Kill]) -> set[tuple[uuid.UUID, int]]:
    """The (image, attempt) claims left ``processing`` by a worker just killed, not counting
    those an earlier kill already stranded."""
    engine = create_engine(database_url)
    with engine.connect() as connection:
        rows = connection.execute(
            select(Image.id, Image.attempts).where(Image.state == ImageState.PROCESSING)
        ).all()
    engine.dispose()
    stranded = {claim for kill in earlier for claim in kill.claims}
    return {(image_id, attempt) for image_id, attempt in rows} - stranded


def _still_dead(database_url: str, claims: set[tuple[uuid.UUID, int]]) -> int:
    """How many of these claims are still ``processing`` under the dead worker's attempt."""
    engine = create_engine(database_url)
    with engine.connect() as connection:
        rows = connection.execute(
            select(Image.id, Image.attempts).where(
                Image.id.in_([image_id for image_id, _ in claims]),
                Image.state == ImageState.PROCESSING,
            )
        ).all()
    engine.dispose()
    return len({(image_id, attempt) for image_id, attempt in rows} & claims)


def _note_recoveries(database_url: str, kills: list[Kill]) -> bool:
    """Time each kill whose claims are all back in work now; True once every kill's are."""
    for kill in kills:
        if kill.recovered_after_s is None and _still_dead(database_url, kill.claims) == 0:
            kill.recovered_after_s = time.monotonic() - kill.at
    return all(kill.recovered_after_s is not None for kill in kills)


@pytest.mark.parametrize("storage", STORES, indirect=True)
def test_kill_9_the_worker_three_times(
    stack: Any,
    private_postgres: Any,
    jpegs: list[bytes],
    wait: Callable,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With the default lease and reconciler interval, a killed worker's images are back in
    work (handed back to the queue and re-sent, or claimed again) within about a minute.

    The killed workers serve grading only, as production's do, so each kill lands on grading
    work (its claims) rather than on a heat map. The worker that takes over serves both
    queues, so the heat maps the killed workers' results asked for are drawn and stored too,
    and each is read back from the store.
    """
    url = private_postgres.url
    headers = _api_key(url)
    stack.start_api()
    stack.start_reconciler()
    status_url = _submit(stack, headers, jpegs)
    rng = random.Random(2026)
    kills: list[Kill] = []

    def progressed(done: int) -> Callable[[], bool]:
        def check() -> bool:
            _note_recoveries(url, kills)  # the earlier kills are timed meanwhile
            return _count(url, ImageState.GRADED) > done

        return check

    try:
        for _ in range(3):
            stack.start_worker(serve="grading")
            wait(progressed(_count(url, ImageState.GRADED)), 120, "the worker to make progress")
            time.sleep(rng.uniform(0.0, 0.4))
            stack.kill_worker()
            kills.append(Kill(time.monotonic(), _dead_claims(url, kills)))
        assert _count(url, ImageState.GRADED) < IMAGES, "kills came too late"
        assert any(kill.claims for kill in kills), "no kill caught a task in hand"
        stack.start_worker(serve="all")
        wait(
            lambda: _note_recoveries(url, kills),
            RECOVERY_S + 30,
            "the killed workers' images to be back in work",
        )
        with capsys.disabled():  # the measurement, shown whether or not the test passes
            for number, kill in enumerate(kills, 1):
                print(
                    f"\nkill -9 number {number}: {len(kill.claims)} claimed image(s) back in "
                    f"work {kill.recovered_after_s:.1f}s after the kill"
                )
        slowest = max(kill.recovered_after_s or 0.0 for kill in kills)
        assert slowest <= RECOVERY_S, f"recovery took {slowest:.1f}s"
        wait(_finished(url), 180, "every image to be graded")
        wait(lambda: _heatmaps(url)[0] == len(_heatmaps(url)[1]), 240, "every heat map")
    except AssertionError:
        print(stack.logs())
        raise
    _assert_graded_exactly_once(url, status_url, headers)
    asked, made = _heatmaps(url)
    assert asked > 0, "no result asked for a heat map"
    store = stack.store()
    unreadable = [
        sha for sha in made if not store.read(store.relative_path(sha)).startswith(b"\x89PNG")
    ]
    assert unreadable == []
    with capsys.disabled():
        print(f"\n{len(made)} heat map(s) drawn after the kills and read back from the store")


@pytest.mark.parametrize("wipe", ["restart", "flushdb"])
def test_redis_loses_its_queue_mid_run(
    wipe: str,
    stack: Any,
    private_postgres: Any,
    private_redis: Any,
    jpegs: list[bytes],
    wait: Callable,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With every default (``requeue_after_s`` is ten minutes), the tasks Redis lost (an
    empty restart, or a ``FLUSHDB`` under running clients) are sent again by the reconciler's
    next pass: it finds its marker gone. A task in hand that a restart cut off with the
    worker's connection comes back through its lease."""
    url = private_postgres.url
    headers = _api_key(url)
    stack.start_api()
    stack.start_reconciler()
    status_url = _submit(stack, headers, jpegs)
    try:
        stack.start_worker()
        wait(lambda: _count(url, ImageState.GRADED) > 0, 120, "first results")
        wiped_at, started = utcnow(), time.monotonic()
        if wipe == "restart":
            private_redis.stop()
            private_redis.start()  # same port, nothing kept: every queued task is gone
        else:
            broker = redis.Redis.from_url(private_redis.url)
            broker.flushdb()
            broker.close()
        assert _count(url, ImageState.GRADED) < IMAGES, "wipe came too late"
        lost = _queued_before(url, wiped_at)
        assert lost > 0, "no queued task was lost"
        wait(
            lambda: _queued_before(url, wiped_at) == 0,
            WIPE_RECOVERY_S + 30,
            "every queued image to be sent again",
        )
        resent_after_s = time.monotonic() - started
        with capsys.disabled():  # the measurement, shown whether or not the test passes
            print(
                f"\nRedis wiped ({wipe}): {lost} queued image(s) sent again "
                f"{resent_after_s:.1f}s later"
            )
        assert resent_after_s <= WIPE_RECOVERY_S, f"re-sending took {resent_after_s:.1f}s"
        wait(_finished(url), 180, "every image to be graded")
        with capsys.disabled():
            print(f"every image graded {time.monotonic() - started:.1f}s after the wipe")
        reconciler_log = "".join(p.read_text() for p in stack.log_dir.glob("reconciler-*.log"))
        # Once for the new Redis the reconciler first met, once for the wipe.
        assert reconciler_log.count("the broker lost its queue") == 2, reconciler_log
    except AssertionError:
        print(stack.logs())
        raise
    _assert_graded_exactly_once(url, status_url, headers)


def test_postgres_restarts_mid_run_and_the_api_answers_503(
    stack: Any, private_postgres: Any, jpegs: list[bytes], wait: Callable
) -> None:
    headers = _api_key(private_postgres.url)
    stack.start_api()
    stack.start_reconciler()
    status_url = _submit(stack, headers, jpegs)
    try:
        stack.start_worker()
        wait(lambda: _count(private_postgres.url, ImageState.GRADED) > 0, 120, "first results")
        private_postgres.stop()
        down = httpx.get(status_url, headers=headers, timeout=30)
        assert down.status_code == 503
        assert down.json()["error"]["code"] == "database_unavailable"
        assert int(down.headers["Retry-After"]) >= 1
        ready = httpx.get(f"{stack.api_url}/readyz", timeout=30)
        assert ready.status_code == 503
        assert ready.json()["checks"] == {"database": "unavailable", "broker": "ok"}
        time.sleep(3)
        private_postgres.start()
        wait(_finished(private_postgres.url), 240, "every image to be graded")
        assert httpx.get(f"{stack.api_url}/readyz", timeout=30).status_code == 200
    except AssertionError:
        print(stack.logs())
        raise
    _assert_graded_exactly_once(private_postgres.url, status_url, headers)


def test_sigterm_finishes_the_batch_in_hand_and_loses_nothing(
    stack: Any, private_postgres: Any, jpegs: list[bytes], wait: Callable
) -> None:
    headers = _api_key(private_postgres.url)
    stack.start_api()
    status_url = _submit(stack, headers, jpegs)  # no reconciler: shutdown alone must be clean
    try:
        stack.start_worker()
        wait(lambda: _count(private_postgres.url, ImageState.GRADED) > 0, 120, "first results")
        worker = stack.processes["worker"]
        worker.send_signal(signal.SIGTERM)
        try:
            assert worker.wait(timeout=60) == 0
        except subprocess.TimeoutExpired:
            pytest.fail("the worker did not stop within 60 s of SIGTERM")
        assert _count(private_postgres.url, ImageState.PROCESSING) == 0, "a batch was abandoned"
        assert _count(private_postgres.url, ImageState.GRADED) < IMAGES, "SIGTERM came too late"
        stack.start_worker()  # scaling back up picks up the rest from the broker
        wait(_finished(private_postgres.url), 180, "every image to be graded")
    except AssertionError:
        print(stack.logs())
        raise
    _assert_graded_exactly_once(private_postgres.url, status_url, headers)
