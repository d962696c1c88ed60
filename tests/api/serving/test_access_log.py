"""The access log's escaping: one request, one line of printable ASCII."""

from __future__ import annotations

import pytest

from api.serving.access_log import escape


@pytest.mark.parametrize(
    ("value", "logged"),
    [
        ("/v1/batches", "/v1/batches"),
        ("/a\n127.0.0.1 FAKE\r\x1b[31m\x00", "/a\\x0a127.0.0.1 FAKE\\x0d\\x1b[31m\\x00"),
        ('/a"b\\c', "/a\\x22b\\x5cc"),
        ("/caf\xc3\xa9", "/caf\\xc3\\xa9"),  # UTF-8 bytes as WSGI's latin-1 text
        ("\u2028", "\\u2028"),
    ],
)
def test_access_log_values_are_printable_ascii(value: str, logged: str) -> None:
    assert escape(value) == logged
