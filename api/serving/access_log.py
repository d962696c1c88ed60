"""gunicorn's access log, one line of printable ASCII per request whatever the client sent.

The path is logged as the app saw it, percent-decoding done: ``%0a`` in a URL would start a
forged log line, ``%1b`` send terminal escapes to whoever tails the log, ``%00`` write a NUL.
Every control, non-ASCII, quote and backslash character in a logged value is written as a
``\\xNN`` escape (as nginx does), so a line's fields are exactly what the format says.
"""

from __future__ import annotations

import re
from typing import Any

from gunicorn.glogging import Logger, SafeAtoms

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


class AccessLogger(Logger):
    """gunicorn's logger with escaped access-log fields; ``logger_class`` in gunicorn_conf."""

    atoms_wrapper_class = EscapedAtoms
