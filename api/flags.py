"""Yes/no values sent as text (form fields, query parameters): one vocabulary for the API."""

from __future__ import annotations

_FLAGS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False, "": False}


def parse_flag(raw: str) -> bool:
    """``true``/``false``, ``1``/``0``, ``yes``/``no``, any case, empty for false; or ValueError."""
    value = _FLAGS.get(raw.strip().lower())
    if value is None:
        raise ValueError(f"not a yes/no value: {raw!r}")
    return value
