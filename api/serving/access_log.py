"""gunicorn's logs: one line per request, in ``RETINAQ_LOG_FORMAT``, whatever the client sent.

The path is logged as the app saw it, percent-decoding done: ``%0a`` in a URL would start a
forged log line, ``%1b`` send terminal escapes to whoever tails the log, ``%00`` write a NUL.
Every control, non-ASCII, quote and backslash character in a logged value is written as a
``\\xNN`` escape (as nginx does), so a line's fields are exactly what the format says. In
JSON the escaped values are encoded once more, so a line stays one line and a field, once
decoded (``jq -r``), still holds no control character.

The logger also sets up the process's own logging (:mod:`common.logs`) before the app is
loaded, so gunicorn's error log, its access log and every line the app logs come out in
one format, and the app's lines carry the request id of the request being served.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from datetime import timedelta
from typing import Any

from gunicorn.config import Config
from gunicorn.glogging import Logger, SafeAtoms
from gunicorn.http.message import Request
from gunicorn.http.wsgi import Response

from api.hooks.request_ids import request_log_context
from common.logs import add_context, configure_logging, format_handler
from common.settings import get_settings

_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\]')


def escape(value: str) -> str:
    """``value`` with every character outside printable ASCII, ``"`` and ``\\`` escaped."""
    # WSGI strings carry bytes as latin-1, so a character is nearly always one byte sent.
    return _UNSAFE.sub(_escaped, value)


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class EscapedAtoms(SafeAtoms):
    """The access log's fields, each escaped."""

    def __init__(self, atoms: dict[str, Any]) -> None:
        dict.__init__(self)
        for key, value in atoms.items():
            self[key] = escape(value) if isinstance(value, str) else value


def access_fields(atoms: Mapping[str, Any]) -> dict[str, Any]:
    """One request's access-log fields for a JSON line, from gunicorn's atoms, escaped.

    The path is ``U``, without the query string: keys sent as ``?api_key=`` and cursors
    never reach a log.
    """
    escaped = EscapedAtoms(dict(atoms))
    size = escaped["B"]
    request_id = escaped["{x-request-id}o"]
    return {
        "remote": escaped["h"],
        "method": escaped["m"],
        "path": escaped["U"],
        "protocol": escaped["H"],
        "status": int(escaped["s"]) if str(escaped["s"]).isdigit() else escaped["s"],
        "bytes": size if isinstance(size, int) else 0,
        "duration_ms": round(int(escaped["D"]) / 1000, 1),
        "request_id": None if request_id == "-" else request_id,
    }


class AccessLogger(Logger):
    """gunicorn's logger with escaped access-log fields; ``logger_class`` in gunicorn_conf."""

    atoms_wrapper_class = EscapedAtoms

    def setup(self, cfg: Config) -> None:
        """gunicorn's handlers, then ours: the root logger for the app, and in JSON, both
        of gunicorn's handlers re-formatted, so no process writes a line of another shape."""
        super().setup(cfg)
        settings = get_settings()
        self.log_format = settings.log_format
        configure_logging(settings.log_format, settings.log_level)
        add_context(request_log_context)
        if settings.log_format == "json":
            for log in (self.error_log, self.access_log):
                for handler in log.handlers:
                    format_handler(handler, "json")

    def access(
        self,
        resp: Response,
        req: Request,
        environ: MutableMapping[str, Any],
        request_time: timedelta,
    ) -> None:
        """One line per request: the format string in text, named fields in JSON."""
        if getattr(self, "log_format", "text") != "json":
            super().access(resp, req, environ, request_time)
            return
        if not self.access_log_enabled:
            return
        try:
            fields = access_fields(dict(self.atoms(resp, req, environ, request_time)))
            self.access_log.info(
                "%s %s %s", fields["method"], fields["path"], fields["status"], extra=fields
            )
        except Exception:
            self.error_log.exception("could not write an access-log line")
