"""How many pixels a process may hold decoded at full resolution at once, across its threads.

A per-image limit (``max_image_pixels``) alone does not bound a worker's memory: sixteen
decoder threads each opening a file just under the limit hold sixteen times that. A
:class:`PixelBudget` is shared by the threads of one process; a thread reserves an image's
pixels, as its header declares them, before decoding it at full size, and gives them back
once the image has been reduced to its working size.

Waiting is first come, first served: a reservation that does not fit makes every later one
wait behind it, so a large image is never starved by a stream of small ones that would
each have fitted. The price is that a small image may wait for room it would have found
beside the large one; decoding is seconds at most, so nothing waits long. A reservation
larger than the whole budget could never be granted and is refused at once.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from common.settings import Settings

log = logging.getLogger(__name__)


class PixelBudget:
    """A counting budget of pixels; a thread waits, in arrival order, until its share fits."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a pixel budget must be positive, not {capacity}")
        self.capacity = capacity
        self._condition = threading.Condition()
        self._queue: deque[object] = deque()
        self._in_use = 0
        self._peak = 0
        self._waits = 0
        self._holding = threading.local()

    @property
    def in_use(self) -> int:
        """Pixels reserved right now."""
        return self._in_use

    @property
    def peak(self) -> int:
        """The most pixels ever reserved at once: what the budget actually allowed."""
        return self._peak

    @property
    def waits(self) -> int:
        """Reservations that had to wait for room: how often the budget held a thread back."""
        return self._waits

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        """Reserve ``pixels`` for the block, returning them however the block ends."""
        self.acquire(pixels)
        try:
            yield
        finally:
            self.release(pixels)

    def acquire(self, pixels: int) -> None:
        """Wait until ``pixels`` fit and every earlier reservation has been granted."""
        if pixels > self.capacity:
            raise ValueError(f"{pixels} pixels can never fit a budget of {self.capacity}")
        if getattr(self._holding, "active", False):
            # Waiting for room while holding a share could wait on itself for ever.
            raise RuntimeError("a thread may hold only one share of a pixel budget at a time")
        ticket = object()
        with self._condition:
            self._queue.append(ticket)
            try:
                if not self._fits(ticket, pixels):
                    self._waits += 1
                    self._condition.wait_for(lambda: self._fits(ticket, pixels))
            finally:
                self._queue.remove(ticket)
                # The next in line may fit now, or may have been waiting behind this one.
                self._condition.notify_all()
            self._in_use += pixels
            self._peak = max(self._peak, self._in_use)
        self._holding.active = True

    def release(self, pixels: int) -> None:
        """Give back a share taken by :meth:`acquire` on this thread."""
        with self._condition:
            self._in_use -= pixels
            self._condition.notify_all()
        self._holding.active = False

    def _fits(self, ticket: object, pixels: int) -> bool:
        return self._queue[0] is ticket and self._in_use + pixels <= self.capacity


def budget_pixels(settings: Settings) -> int:
    """The budget settings ask for: twice the per-image limit unless set, never below it.

    Below the per-image limit an allowed image could never be decoded, so such a setting
    is raised to the limit (and said so) rather than left to stall a worker.
    """
    wanted = settings.decode_pixel_budget or 2 * settings.max_image_pixels
    if wanted < settings.max_image_pixels:
        log.warning(
            "decode_pixel_budget %d is below max_image_pixels %d; using %d",
            wanted,
            settings.max_image_pixels,
            settings.max_image_pixels,
        )
        return settings.max_image_pixels
    return wanted
