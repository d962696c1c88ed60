"""Reading the JSON logs of real processes, for the tests that follow requests and hunt leaks."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from api.serving.access_log import escape

# Written past Python's logging, and so not JSON (docs/operations.md, "Logs"): TensorFlow's
# C++ runtime as it loads (absl's format), and Celery's shutdown notice, printed from its
# signal handler after a blank line. Nothing else may be.
UNFORMATTED = re.compile(
    r"[IWEF]\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] "
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"
    r"|worker: (Warm|Cold) shutdown \(MainProcess\)$"
    r"|$"
)


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a log, each of which must be one JSON object with the common fields,
    but for what other code writes past Python's logging (:data:`UNFORMATTED`)."""
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if UNFORMATTED.match(line):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"{path.name}:{number} is not JSON: {line[:300]!r}")
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "message"} <= set(record), line
        records.append(record)
    return records


def forms(value: str) -> set[str]:
    """How a value could appear in a line: as is, JSON- or URL-encoded, escaped as the access
    log escapes, or base64url."""
    encoded = base64.urlsafe_b64encode(value.encode()).decode()
    return {
        value,
        json.dumps(value)[1:-1],
        quote(value, safe=""),
        escape(value),
        encoded.rstrip("="),
    }
