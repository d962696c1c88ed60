"""Keeping a task's claims alive while it works: their leases renewed from a thread.

A lease is short (``lease_s``, under a minute by default) so that a killed worker's images
are back in work within about a minute. A live worker keeps its own by renewing them every
third of a lease from a daemon thread, whatever the task thread is doing: one model call
may outlast a whole lease, and the claims stay ours. A renewal that finds an image no
longer ours (finished, handed back, taken over) stops renewing it; a database error is
logged and the next tick tries again, and never reaches the task, whose own writes have
their own retries.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable
from types import TracebackType

from sqlalchemy.orm import Session, sessionmaker

from common.lifecycle.claims import Claim, renew_leases
from worker.db_retry import is_connection_problem

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 2.0


class LeaseKeeper:
    """Renews the leases of the claims it holds every ``lease_s / 3`` seconds while entered."""

    def __init__(
        self, sessions: sessionmaker[Session], claims: Iterable[Claim], *, lease_s: int
    ) -> None:
        self.sessions = sessions
        self.lease_s = lease_s
        self.interval_s = lease_s / 3
        self._held: dict[uuid.UUID, Claim] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
        self.hold(claims)

    def hold(self, claims: Iterable[Claim]) -> None:
        """Renew these claims too, from the next tick on."""
        with self._lock:
            self._held.update((c.image_id, c) for c in claims)

    @property
    def held(self) -> set[uuid.UUID]:
        """The images whose leases are still being renewed."""
        with self._lock:
            return set(self._held)

    def renew(self) -> None:
        """One renewal of every held lease, now; claims no longer ours are dropped."""
        with self._lock:
            claims = list(self._held.values())
        if not claims:
            return
        with self.sessions.begin() as session:
            ours = renew_leases(session, claims, lease_s=self.lease_s)
        lost = [c.image_id for c in claims if c.image_id not in ours]
        if lost:
            with self._lock:
                for image_id in lost:
                    self._held.pop(image_id, None)
            log.info("stopped renewing %d lease(s) no longer held by this task", len(lost))

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stopped.set()
        # A renewal in flight is a short UPDATE; one stuck on a dead connection is not
        # waited for (the thread is a daemon, and renewing a finished claim changes nothing).
        self._thread.join(timeout=min(self.interval_s, JOIN_TIMEOUT_S))

    def _run(self) -> None:
        while not self._stopped.wait(self.interval_s):
            try:
                self.renew()
            except Exception as error:
                log.warning(
                    "could not renew %d lease(s) (%s); trying again in %.1fs",
                    len(self.held),
                    type(error).__name__,
                    self.interval_s,
                    # An outage is one line a tick; anything else is a bug worth its trace.
                    exc_info=not is_connection_problem(error),
                )
