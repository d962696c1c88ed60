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

from common.spreadsheet import FORMULA_TRIGGERS, RESULT_COLUMNS, SpreadsheetWriter, neutralise

__all__ = [
    "FORMULA_TRIGGERS",
    "METADATA_COLUMNS",
    "RESULT_COLUMNS",
    "SpreadsheetWriter",
    "flatten_result",
    "metadata_csv",
    "neutralise",
    "write_results_csv",
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


def flatten_result(row: dict[str, Any]) -> dict[str, Any]:
    """One results-listing row as a flat CSV record."""
    model = row.get("model") or {}
    error = row.get("error") or {}
    return {
        "image_id": row["image_id"],
        "filename": row["filename"],
        "patient_id": row.get("patient_id") or "",
        "laterality": row.get("laterality") or "",
        "state": row["state"],
        "gradable": "" if row.get("gradable") is None else str(row["gradable"]).lower(),
        "ungradable_reasons": ";".join(row.get("ungradable_reasons") or []),
        "grade": "" if row.get("grade") is None else row["grade"],
        "grade_name": row.get("grade_name") or "",
        "expected_grade": (
            "" if row.get("expected_grade") is None else f"{row['expected_grade']:.3f}"
        ),
        "referable": "" if row.get("referable") is None else str(row["referable"]).lower(),
        "referable_threshold": (
            "" if row.get("referable_threshold") is None else row["referable_threshold"]
        ),
        "confidence": "" if row.get("confidence") is None else f"{row['confidence']:.4f}",
        "model_name": model.get("name", ""),
        "model_version": model.get("version", ""),
        "model_sha256": model.get("sha256", ""),
        "preprocessing_version": row.get("preprocessing_version") or "",
        "error_code": error.get("code", ""),
        "error_message": error.get("message", ""),
    }


def write_results_csv(rows: list[dict[str, Any]], out: Path) -> Path:
    """Write flattened result rows to ``out``, safe to open in a spreadsheet."""
    return write_spreadsheet_csv(out, RESULT_COLUMNS, (flatten_result(r) for r in rows))
