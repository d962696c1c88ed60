"""When the client tries a request again, and for how long: one tenacity policy for every call.

Worth retrying: a connection the API refused, dropped or let time out (a restart, a
deploy, a proxy in between), 429 (a quota), 502/503/504 (a dependency or a proxy down)
and 409 ``idempotency_key_in_progress`` (the first try of the same request is still
running). Everything else is the caller's to see at once. A ``Retry-After`` the API sent
is honoured, capped at ``max_wait_s``; without one the wait grows exponentially with
jitter. Retries stop after ``attempts`` tries, or when the next wait would end past the
command's ``deadline``, so a user's overall time limit holds. Every request the client
retries is safe to send twice: a GET, or a POST carrying an ``Idempotency-Key``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential_jitter

RETRY_STATUSES = frozenset({429, 502, 503, 504})
RETRY_CODES = frozenset({"idempotency_key_in_progress"})


@dataclass(frozen=True)
class RetryPolicy:
    """How many tries, how long a wait may be, and the monotonic time no retry may pass."""

    attempts: int = 10
    max_wait_s: float = 60.0
    deadline: float | None = None
    on_retry: Callable[[str], None] | None = None

    def retrying(self) -> Retrying:
        """A fresh tenacity ``Retrying`` for one request (iterate it, one ``with`` per try)."""
        return Retrying(
            retry=retry_if_exception(is_transient),
            wait=self._wait,
            stop=self._stop,
            before_sleep=self._announce,
            reraise=True,
        )

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        hinted = getattr(error, "retry_after", None)
        if hinted is not None:
            return float(min(max(hinted, 0.0), self.max_wait_s))
        return float(wait_exponential_jitter(initial=1, max=self.max_wait_s, jitter=1)(state))

    def _stop(self, state: RetryCallState) -> bool:
        if state.attempt_number >= self.attempts:
            return True
        return self.deadline is not None and time.monotonic() + state.upcoming_sleep > self.deadline

    def _announce(self, state: RetryCallState) -> None:
        if self.on_retry is None or state.outcome is None:
            return
        error = state.outcome.exception()
        self.on_retry(
            f"{describe(error)}; retrying in {state.upcoming_sleep:.0f}s "
            f"(attempt {state.attempt_number + 1} of {self.attempts})"
        )


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` is worth another try of the same request."""
    if isinstance(error, httpx.UnsupportedProtocol):
        return False
    if isinstance(error, httpx.TransportError):
        return True
    status = getattr(error, "status", None)
    return status in RETRY_STATUSES or getattr(error, "code", None) in RETRY_CODES


def describe(error: BaseException | None) -> str:
    """A short phrase for a failed try, for the retry notice and the final message."""
    if isinstance(error, httpx.TimeoutException):
        return f"the API did not answer in time ({type(error).__name__})"
    if isinstance(error, httpx.TransportError):
        return f"the API is unreachable ({str(error) or type(error).__name__})"
    return str(error)


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; None if absent/bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
