"""One logging setup for every RetinaQ process: JSON lines for a log pipeline, or text.

Every process (gunicorn's API processes, Celery workers, the reconciler) calls
:func:`configure_logging` once with ``RETINAQ_LOG_FORMAT``; every existing stdlib
``logging`` call then comes out in that format, with no change at the call sites. A
process names the work in hand through :func:`add_context` (the API its request id, the
worker its task and the request that sent it), and each line carries those fields, so an
operator can follow one upload through every process by its ``X-Request-ID``.

Never log patient ids, filenames or storage keys: log image, batch and request ids.
Fields that would carry them are dropped from a line's structured fields whoever passes them.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from pythonjsonlogger.json import JsonFormatter

LogContext = Callable[[], Mapping[str, Any]]

# The fields every JSON line starts with, in this order, under these names.
_JSON_FIELDS = {"asctime": "time", "levelname": "level", "name": "logger", "message": "message"}
# Structured fields that would name a patient, a file or stored bytes: never written.
FORBIDDEN_FIELDS = frozenset(
    {"patient_id", "filename", "filenames", "sha256", "storage_path", "key", "api_key"}
)
# Fields the text format appends to a line, when a line has them.
_TEXT_CONTEXT = ("request_id", "task_id")

_contexts: list[LogContext] = []


def add_context(context: LogContext) -> None:
    """Add fields to every line this process logs from now on: ``context()`` is asked for
    each line and returns the fields of the work in hand (none when there is none)."""
    if context not in _contexts:
        _contexts.append(context)


class ContextFilter(logging.Filter):
    """Puts the registered contexts' fields on each record, unless the call passed its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Always keeps the record; only adds fields."""
        for context in _contexts:
            try:
                fields = context()
            except Exception:  # a context must never cost a log line
                continue
            for name, value in fields.items():
                if value is not None and not hasattr(record, name):
                    setattr(record, name, value)
        return True


class JsonLineFormatter(JsonFormatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, then fields.

    ``ensure_ascii`` escapes every control and non-ASCII character, so a value can never
    break a line or send terminal escapes, whatever it holds.
    """

    def __init__(self) -> None:
        super().__init__(list(_JSON_FIELDS), rename_fields=_JSON_FIELDS, json_ensure_ascii=True)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        """UTC with milliseconds: lines from several hosts sort into one order."""
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{seconds}.{int(record.msecs):03d}Z"

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        """The library's fields, less any that would name a patient, a file or a key."""
        super().add_fields(log_data, record, message_dict)
        for name in FORBIDDEN_FIELDS.intersection(log_data):
            del log_data[name]


class TextFormatter(logging.Formatter):
    """``time LEVEL logger [request_id=… task_id=…]: message``, for a person reading along."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The line, with the context fields the record carries."""
        named = [f"{n}={getattr(record, n)}" for n in _TEXT_CONTEXT if hasattr(record, n)]
        record.context = f" [{' '.join(named)}]" if named else ""
        return super().format(record)


def formatter_for(log_format: str) -> logging.Formatter:
    """The formatter for ``RETINAQ_LOG_FORMAT`` (``json`` or ``text``)."""
    if log_format == "json":
        return JsonLineFormatter()
    if log_format == "text":
        return TextFormatter()
    raise ValueError(f"unknown log format {log_format!r}: use json or text")


def configure_logging(
    log_format: str, level: int | str = logging.INFO, stream: TextIO | None = None
) -> logging.Handler:
    """Send every logger's records to ``stream`` (stderr) in ``log_format``; returns the handler.

    Replaces whatever handlers the root logger had (``basicConfig``'s, Celery's), so a
    second call reconfigures rather than doubling every line.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter_for(log_format))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def format_handler(handler: logging.Handler, log_format: str) -> None:
    """Give a handler another library installed (gunicorn's) our format and context fields."""
    handler.setFormatter(formatter_for(log_format))
    if not any(isinstance(f, ContextFilter) for f in handler.filters):
        handler.addFilter(ContextFilter())
