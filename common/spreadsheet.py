"""Cells a spreadsheet cannot run: CSV for people, written by the CLI and the API alike.

Spreadsheets run a cell beginning with ``=``, ``+``, ``-``, ``@``, tab or carriage return
as a formula: a filename ``+SUM(1+1).jpg`` or a patient id ``=HYPERLINK(...)`` would
execute on the reader's machine. :func:`neutralise` prefixes such a cell with a single
quote (OWASP's rule), which spreadsheets show as text. Numbers stay numbers: an
``int``/``float``, or a string that is only a decimal number such as ``-0.5``, cannot be
a formula and is written as is. A program reading these files sees the quote; strip a
leading ``'`` from text cells that start with one of those characters to recover the
original.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from typing import IO, Any

# The results CSV's columns, the same whether the CLI or the API writes it (the API adds
# the programme's scheme columns after them).
RESULT_COLUMNS = (
    "image_id",
    "filename",
    "patient_id",
    "laterality",
    "state",
    "gradable",
    "ungradable_reasons",
    "grade",
    "grade_name",
    "expected_grade",
    "referable",
    "referable_threshold",
    "confidence",
    "model_name",
    "model_version",
    "model_sha256",
    "preprocessing_version",
    "error_code",
    "error_message",
)
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def neutralise(value: Any) -> Any:
    """A cell a spreadsheet cannot run as a formula; numbers are returned unchanged."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        value = "" if value is None else str(value)
    if not isinstance(value, str):
        return value
    if value.startswith(FORMULA_TRIGGERS) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


class SpreadsheetWriter:
    """A ``csv.writer`` whose every cell goes through :func:`neutralise`."""

    def __init__(self, handle: IO[str]) -> None:
        self._writer = csv.writer(handle)

    def writerow(self, row: Iterable[Any]) -> None:
        """Write one row, each cell made inert."""
        self._writer.writerow([neutralise(cell) for cell in row])
