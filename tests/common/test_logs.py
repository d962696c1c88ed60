"""The shared logging setup: JSON or text lines, context fields, nothing that names a patient."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator, Mapping

import pytest

from common import logs
from common.settings import Settings


@pytest.fixture
def root_restored() -> Iterator[None]:
    """configure_logging replaces the root logger's handlers: give pytest's back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    contexts = list(logs._contexts)
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logs._contexts[:] = contexts


def _emit(log_format: str, *args: object, **kwargs: object) -> str:
    stream = io.StringIO()
    logs.configure_logging(log_format, logging.INFO, stream)
    logging.getLogger("retinaq.test").info(*args, **kwargs)  # type: ignore[arg-type]
    return stream.getvalue()


@pytest.mark.usefixtures("root_restored")
def test_json_lines_carry_the_common_fields_then_the_call_and_context_fields() -> None:
    logs.add_context(lambda: {"request_id": "req-1", "task_id": None})
    out = _emit("json", "sent %d image(s)", 3, extra={"images": 3, "batch_ids": ["b"]})
    assert out.endswith("\n") and out.count("\n") == 1
    record = json.loads(out)
    assert list(record)[:4] == ["time", "level", "logger", "message"]
    assert record["time"].endswith("Z") and record["time"][10] == "T"
    assert (record["level"], record["logger"], record["message"]) == (
        "INFO",
        "retinaq.test",
        "sent 3 image(s)",
    )
    assert (record["images"], record["batch_ids"], record["request_id"]) == (3, ["b"], "req-1")
    assert "task_id" not in record  # a context's None is no field


@pytest.mark.usefixtures("root_restored")
def test_a_call_s_own_field_wins_over_the_context() -> None:
    logs.add_context(lambda: {"request_id": "the-task-s"})
    record = json.loads(_emit("json", "image failed", extra={"request_id": "the-image-s"}))
    assert record["request_id"] == "the-image-s"


@pytest.mark.usefixtures("root_restored")
def test_fields_naming_a_patient_a_file_or_stored_bytes_are_dropped() -> None:
    extra = {"patient_id": "MRN-1", "sha256": "ab" * 32, "storage_path": "ab/cd/x", "images": 1}
    record = json.loads(_emit("json", "graded", extra=extra))
    assert set(record) & logs.FORBIDDEN_FIELDS == set()
    assert record["images"] == 1


@pytest.mark.usefixtures("root_restored")
def test_a_value_cannot_break_a_json_line_or_reach_a_terminal_raw() -> None:
    out = _emit("json", "odd %s", 'a\nb\x1b[31m"\u00e9')
    assert out.count("\n") == 1
    assert all(" " <= char <= "~" for char in out.rstrip("\n"))
    assert json.loads(out)["message"] == 'odd a\nb\x1b[31m"\u00e9'


@pytest.mark.usefixtures("root_restored")
def test_a_failing_context_costs_no_line() -> None:
    def broken() -> Mapping[str, str]:
        raise RuntimeError("no request")

    logs.add_context(broken)
    assert json.loads(_emit("json", "still here"))["message"] == "still here"


@pytest.mark.usefixtures("root_restored")
def test_text_lines_name_the_request_and_task_for_a_person() -> None:
    logs.add_context(lambda: {"request_id": "req-2", "task_id": "t-9"})
    line = _emit("text", "hello %s", "there")
    assert " INFO retinaq.test [request_id=req-2 task_id=t-9]: hello there\n" in line
    assert (
        logs.TextFormatter()
        .format(logging.makeLogRecord({"msg": "x", "name": "n"}))
        .endswith(" n: x")
    )


@pytest.mark.usefixtures("root_restored")
def test_configuring_again_replaces_rather_than_doubles() -> None:
    logs.configure_logging("text", logging.INFO, io.StringIO())
    out = _emit("json", "once")
    assert len(logging.getLogger().handlers) == 1
    assert out.count("once") == 1


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="json or text"):
        logs.formatter_for("xml")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, "text"),  # the embedded profile: make demo, read by a person
        ({"database_url": "postgresql+psycopg://u@h/db"}, "json"),  # production profile
        ({"database_url": "postgresql+psycopg://u@h/db", "log_format": "text"}, "text"),
        ({"log_format": "json"}, "json"),
    ],
)
def test_the_log_format_follows_the_profile_unless_set(
    overrides: dict[str, str], expected: str, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RETINAQ_LOG_FORMAT", raising=False)
    assert Settings(var_dir=tmp_path, **overrides).log_format == expected  # type: ignore[arg-type]
