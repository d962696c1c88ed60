"""Riding out database outages: the worker retries a unit of database work with backoff.

Each retry opens a fresh session, so a connection that died with the server is replaced.
When the outage outlasts ``db_retry_s`` the caller gives the task back to the broker
instead of acknowledging work it could not record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class DatabaseUnavailable(RuntimeError):
    """The database stayed unreachable for longer than the worker is willing to wait."""


def is_connection_problem(error: BaseException) -> bool:
    """Errors that a reconnect can cure, as opposed to bugs or constraint violations."""
    if isinstance(error, OperationalError):
        return True
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)


def _log_retry(state: RetryCallState) -> None:
    error = state.outcome.exception() if state.outcome else None
    log.warning(
        "database unavailable (%s); retry %d in %.1fs",
        error.__class__.__name__ if error else "?",
        state.attempt_number,
        state.next_action.sleep if state.next_action else 0.0,
    )


def with_db_retry(work: Callable[[], T], *, budget_s: float) -> T:
    """Run ``work``, retrying connection failures with exponential backoff for ``budget_s``."""
    retrying = Retrying(
        retry=retry_if_exception(is_connection_problem),
        wait=wait_exponential(multiplier=0.25, max=8.0),
        stop=stop_after_delay(budget_s),
        before_sleep=_log_retry,
        reraise=True,
    )
    try:
        return retrying(work)
    except (OperationalError, DBAPIError) as error:
        if is_connection_problem(error):
            raise DatabaseUnavailable(str(error.orig or error)) from error
        raise
