"""The pixel budget shared by decoder threads: bounded, fair, and released on failure."""

from __future__ import annotations

import io
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from common.imaging.decode import ImageDecodeError, decode_image
from common.imaging.pixel_budget import PixelBudget, budget_pixels
from common.settings import Settings
from tests.support import wait_for


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (120, 60, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_many_threads_never_hold_more_than_the_budget() -> None:
    budget = PixelBudget(1000)
    lock = threading.Lock()
    held = [0]
    most = [0]
    rng = random.Random(0)
    sizes = [rng.randint(1, 1000) for _ in range(400)]

    def work(pixels: int) -> None:
        with budget.hold(pixels):
            # Counted independently of the budget's own bookkeeping.
            with lock:
                held[0] += pixels
                most[0] = max(most[0], held[0])
            time.sleep(0.0005)
            with lock:
                held[0] -= pixels

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(work, sizes))
    assert most[0] <= 1000
    assert budget.peak <= 1000
    assert budget.peak >= most[0], "the budget counts a share from grant to release"
    assert budget.in_use == 0
    assert budget.waits > 0, "sixteen threads over 400 shares must have queued"
    assert most[0] > max(sizes) // 2, "threads did run side by side"


def test_a_large_share_waits_then_runs_and_later_small_ones_queue_behind_it() -> None:
    budget = PixelBudget(100)
    order: list[str] = []
    first_small = threading.Event()
    release_first = threading.Event()

    def small_holder() -> None:
        with budget.hold(30):
            order.append("small-1")
            first_small.set()
            release_first.wait(5)

    def large() -> None:
        with budget.hold(90):
            order.append("large")

    def late_small() -> None:
        with budget.hold(10):
            order.append("small-2")

    threads = [threading.Thread(target=small_holder)]
    threads[0].start()
    assert first_small.wait(5)
    threads.append(threading.Thread(target=large))
    threads[1].start()
    wait_for(lambda: budget.waits == 1, 5, "the large share to wait", interval=0.005)
    # 30 + 10 would fit, but the large share came first: first come, first served.
    threads.append(threading.Thread(target=late_small))
    threads[2].start()
    wait_for(lambda: budget.waits == 2, 5, "the late share to wait", interval=0.005)
    assert order == ["small-1"]
    release_first.set()
    for thread in threads:
        thread.join(5)
    assert order == ["small-1", "large", "small-2"]
    assert budget.in_use == 0
    assert budget.peak == 90


def test_a_share_larger_than_the_budget_is_refused_at_once() -> None:
    budget = PixelBudget(100)
    with pytest.raises(ValueError, match="can never fit"):
        budget.acquire(101)
    assert budget.in_use == 0
    with budget.hold(100):
        assert budget.in_use == 100


def test_a_thread_cannot_take_a_second_share_while_holding_one() -> None:
    budget = PixelBudget(100)
    with budget.hold(10), pytest.raises(RuntimeError, match="only one share"):
        budget.acquire(10)
    with budget.hold(10):  # the failed attempt left nothing behind
        assert budget.in_use == 10


def test_a_failing_decode_gives_its_share_back() -> None:
    budget = PixelBudget(10_000_000)
    truncated = _png(2000, 1500)[:3000]
    with pytest.raises(ImageDecodeError) as failed:
        decode_image(truncated, max_pixels=5_000_000, draft_size=256, budget=budget)
    assert failed.value.code == "corrupt_image"
    assert budget.peak == 2000 * 1500, "the share was taken before decoding"
    assert budget.in_use == 0
    # and a good image decodes afterwards under the same budget
    decode_image(_png(2000, 1500), max_pixels=5_000_000, draft_size=256, budget=budget)
    assert budget.in_use == 0


def test_decode_reserves_the_drafted_size_of_a_jpeg() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (2048, 1536), (120, 60, 30)).save(buffer, format="JPEG")
    budget = PixelBudget(10_000_000)
    image = decode_image(buffer.getvalue(), max_pixels=5_000_000, draft_size=256, budget=budget)
    assert budget.peak == 512 * 384, "the JPEG was decoded at an eighth of its size, no more"
    assert image.size == (512, 384)


def test_an_image_over_a_budget_smaller_than_the_limit_is_too_many_pixels() -> None:
    with pytest.raises(ImageDecodeError) as refused:
        decode_image(_png(400, 300), max_pixels=200_000, budget=PixelBudget(100_000))
    assert refused.value.code == "too_many_pixels"
    assert "decoding budget of 100000" in refused.value.message


@pytest.mark.parametrize(
    ("budget", "limit", "expected"),
    [
        (0, 50_000_000, 100_000_000),  # unset: twice the per-image limit
        (300_000_000, 50_000_000, 300_000_000),
        (10_000_000, 50_000_000, 50_000_000),  # below the limit: raised to it
    ],
)
def test_budget_from_settings(budget: int, limit: int, expected: int) -> None:
    settings = Settings(decode_pixel_budget=budget, max_image_pixels=limit)
    assert budget_pixels(settings) == expected


def test_the_default_limit_fits_the_largest_fundus_cameras_with_headroom() -> None:
    settings = Settings()
    assert 2 * 24_000_000 <= settings.max_image_pixels < 110_000_000
    assert budget_pixels(settings) == 2 * settings.max_image_pixels
