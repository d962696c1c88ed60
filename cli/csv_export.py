"""Every CSV the CLI writes: result tables for people, and metadata sent to the API.

Two kinds, deliberately treated differently:

- **Files for people** (``retinaq results --out``, ``retinaq submit --out``, the demo's
  ``results.csv``) are opened in spreadsheets, so every cell goes through
  :class:`common.spreadsheet.SpreadsheetWriter`, which the API's ``results.csv`` uses
  too: a cell a spreadsheet would run as a formula is prefixed with a single quote.
- **Data for the API** (the metadata part of an upload) is written byte-faithfully with
  the csv module's quoting and no prefix: the API stores the patient id it is given, and
  a quote added here would become part of the patient's identity.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from common.spreadsheet import FORMULA_TRIGGERS, SpreadsheetWriter, neutralise

__all__ = [
    "FORMULA_TRIGGERS",
    "METADATA_COLUMNS",
    "SpreadsheetWriter",
    "metadata_csv",
    "neutralise",
    "write_spreadsheet_csv",
]

METADATA_COLUMNS = ("filename", "patient_id", "laterality")


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
