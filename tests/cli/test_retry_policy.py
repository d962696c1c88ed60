"""The client's retry policy and journal, without a network: which failures are retried,
how long a wait is, when retrying stops, and the journal's round trip and home."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest

from cli.client import ApiClientError
from cli.journal import (
    JOURNAL_NAME,
    ChunkRecord,
    Journal,
    JournalError,
    file_record,
    journal_path,
    load_journal,
)
from cli.retries import RetryPolicy, is_transient, retry_after_seconds


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (httpx.ConnectError("refused"), True),
        (httpx.ReadTimeout("slow"), True),
        (httpx.RemoteProtocolError("dropped"), True),
        (httpx.UnsupportedProtocol("ftp"), False),
        (ApiClientError(429, "rate_limited", "slow down", 12.0), True),
        (ApiClientError(503, "database_unavailable", "down", 5.0), True),
        (ApiClientError(502, "bad_gateway", "proxy"), True),
        (ApiClientError(409, "idempotency_key_in_progress", "wait", 1.0), True),
        (ApiClientError(409, "batch_closed", "closed"), False),
        (ApiClientError(401, "invalid_api_key", "no"), False),
        (ApiClientError(422, "idempotency_key_reused", "no"), False),
        (ApiClientError(500, "internal_error", "bug"), False),
        (ApiClientError(None, "foreign_origin", "elsewhere"), False),
    ],
)
def test_which_failures_are_worth_another_try(error: BaseException, transient: bool) -> None:
    assert is_transient(error) is transient


def _tries(policy: RetryPolicy, errors: list[BaseException]) -> tuple[int, list[float]]:
    """Run the policy over failures in turn (then success), recording each planned wait."""
    waits: list[float] = []
    retrying = policy.retrying()
    retrying.sleep = waits.append  # type: ignore[method-assign]
    tries = 0
    failures = iter(errors)
    for attempt in retrying:
        with attempt:
            tries += 1
            error = next(failures, None)
            if error is not None:
                raise error
    return tries, waits


def test_retry_after_is_honoured_and_capped() -> None:
    policy = RetryPolicy(attempts=5, max_wait_s=30)
    errors: list[BaseException] = [
        ApiClientError(429, "rate_limited", "", 12.0),
        ApiClientError(429, "rate_limited", "", 600.0),
        ApiClientError(503, "database_unavailable", "", 0.0),
    ]
    tries, waits = _tries(policy, errors)
    assert tries == 4
    assert waits == [12.0, 30.0, 0.0]


def test_without_retry_after_the_wait_grows_up_to_the_cap() -> None:
    errors: list[BaseException] = [httpx.ConnectError("refused")] * 6
    _, waits = _tries(RetryPolicy(attempts=10, max_wait_s=8), errors)
    assert len(waits) == 6
    assert all(0 <= wait <= 8 for wait in waits)
    assert waits[-1] == 8, "capped"


def test_attempts_and_the_deadline_stop_retrying() -> None:
    refused: list[BaseException] = [httpx.ConnectError("refused")] * 10
    with pytest.raises(httpx.ConnectError):
        _tries(RetryPolicy(attempts=3, max_wait_s=0), refused)
    limited: list[BaseException] = [ApiClientError(429, "rate_limited", "", 20.0)]
    soon = RetryPolicy(attempts=10, deadline=time.monotonic() + 5)
    with pytest.raises(ApiClientError, match="rate_limited"):
        _tries(soon, limited)  # a 20 s wait would end past the deadline: no retry at all


def test_a_non_transient_failure_is_not_retried() -> None:
    with pytest.raises(ApiClientError, match="invalid_api_key"):
        _tries(RetryPolicy(attempts=10), [ApiClientError(401, "invalid_api_key", "")])


def test_retry_after_as_seconds_or_an_http_date() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= (retry_after_seconds(later) or 0) <= 30
    earlier = format_datetime(datetime.now(UTC) - timedelta(seconds=30), usegmt=True)
    assert retry_after_seconds(earlier) == 0.0


def test_the_journal_round_trips_and_replaces_itself_whole(tmp_path: Path) -> None:
    image = tmp_path / "P001" / "left.jpg"
    image.parent.mkdir()
    image.write_bytes(b"photograph")
    record = file_record(image)
    journal = Journal(
        tmp_path / JOURNAL_NAME,
        "http://127.0.0.1:8000",
        "create-key",
        "ref",
        "metadata-digest",
        {"P001/left.jpg": record},
        batch_id="b1",
        status_url="http://127.0.0.1:8000/v1/batches/b1",
        chunks=[ChunkRecord("k1", ["P001/left.jpg"], acknowledged=True)],
    )
    journal.save()
    assert load_journal(journal.path) == journal
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == [JOURNAL_NAME], "no temporary"
    journal.remove()
    assert load_journal(journal.path) is None


def test_a_file_record_is_rehashed_only_when_size_or_mtime_changed(tmp_path: Path) -> None:
    image = tmp_path / "eye.jpg"
    image.write_bytes(b"one")
    first = file_record(image)
    assert file_record(image, first) is first
    image.write_bytes(b"two")
    assert file_record(image, first).sha256 != first.sha256


def test_a_damaged_journal_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    path = tmp_path / JOURNAL_NAME
    path.write_text("{not json")
    with pytest.raises(JournalError, match="cannot be read"):
        load_journal(path)
    path.write_text('{"version": 1, "files": {}}')
    with pytest.raises(JournalError, match="damaged"):
        load_journal(path)


def test_the_journal_lives_beside_what_was_submitted(tmp_path: Path) -> None:
    folder = tmp_path / "screening"
    (folder / "P001").mkdir(parents=True)
    (folder / "P002").mkdir()
    left, right = folder / "P001" / "l.jpg", folder / "P002" / "r.jpg"
    left.write_bytes(b"l")
    right.write_bytes(b"r")
    assert journal_path([folder]) == folder / JOURNAL_NAME
    assert journal_path([left, right]) == folder.resolve() / JOURNAL_NAME
    assert journal_path([left]) == (folder / "P001").resolve() / JOURNAL_NAME
