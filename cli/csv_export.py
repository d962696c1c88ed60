"""Every CSV the CLI writes: result tables for people, and metadata sent to the API.

Two kinds, deliberately treated differently:

- **Files for people** (``retinaq results --out``, ``retinaq submit --out``, the demo's
  ``results.csv``) are opened in spreadsheets, which run a cell beginning with ``=``,
  ``+``, ``-``, ``@``, tab or carriage return as a formula: a filename
  ``+SUM(1+1).jpg`` or a patient id ``=HYPERLINK(...)`` would execute on the reader's
  machine. :class:`SpreadsheetWriter` prefixes such a cell with a single quote (OWASP's
  rule), which spreadsheets show as text. Numbers stay numbers: an ``int``/``float``,
  or a string that is only a decimal number such as ``-0.5``, cannot be a formula and
  is written as is. A program reading these files sees the quote; strip a leading ``'``
  from text cells that start with one of those characters to recover the original.
- **Data for the API** (the metadata part of an upload) is written byte-faithfully with
  the csv module's quoting and no prefix: the API stores the patient id it is given, and
  a quote added here would become part of the patient's identity.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
METADATA_COLUMNS = ("filename", "patient_id", "laterality")


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


def write_spreadsheet_csv(
    out: Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]
) -> Path:
    """Write records for people to open in a spreadsheet; returns ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = SpreadsheetWriter(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(row.get(column, "") for column in columns)
    return out


def metadata_csv(rows: Iterable[Mapping[str, str]]) -> str:
    """The ``filename,patient_id,laterality`` part of an upload, exactly as given."""
    buffer = io.StringIO(newline="")
    # The default "\r\n" terminator also makes the csv module quote a lone CR in a cell.
    writer = csv.writer(buffer)
    writer.writerow(METADATA_COLUMNS)
    for row in rows:
        writer.writerow(row.get(column) or "" for column in METADATA_COLUMNS)
    return buffer.getvalue()
