"""A batch's results as CSV for people: the CLI's columns, then the scheme's codes.

The first columns are those ``retinaq results --out`` writes (cli/client.py), in the same
order and format, so a programme's spreadsheet reads either file; the scheme's columns
follow: the image's code, maculopathy (never assessed), and its patient's code, outcome
and recall interval. Every cell is made formula-safe by common.spreadsheet.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from common.db.tables import Image, Result
from common.screening.patients import PatientOutcome
from common.screening.schemes import MACULOPATHY_NOT_ASSESSED, GradingScheme
from common.spreadsheet import RESULT_COLUMNS, SpreadsheetWriter

SCHEME_COLUMNS = (
    "scheme",
    "scheme_code",
    "maculopathy",
    "patient_code",
    "patient_outcome",
    "recall_months",
)
COLUMNS = RESULT_COLUMNS + SCHEME_COLUMNS


def _flag(value: bool | None) -> str:
    return "" if value is None else str(value).lower()


def image_code(result: Result | None, scheme: GradingScheme) -> str:
    """The scheme's code for one image: mapped grade, the ungradable code, or empty."""
    if result is None:
        return ""
    if result.grade is None or result.referable is None:
        return scheme.ungradable_code
    return scheme.code_for(result.grade, result.referable)


def result_record(
    image: Image, result: Result | None, scheme: GradingScheme, patient: PatientOutcome | None
) -> list[Any]:
    """One image's row, cells in :data:`COLUMNS` order."""
    graded = result is not None
    return [
        str(image.id),
        image.filename,
        image.patient_id or "",
        image.laterality or "",
        image.state.value,
        _flag(result.gradable) if result else "",
        ";".join(result.ungradable_reasons) if result else "",
        "" if result is None or result.grade is None else result.grade,
        (result.grade_name or "") if result else "",
        "" if result is None or result.expected_grade is None else f"{result.expected_grade:.3f}",
        _flag(result.referable) if result else "",
        "" if result is None or result.referable_threshold is None else result.referable_threshold,
        "" if result is None or result.confidence is None else f"{result.confidence:.4f}",
        result.model_name if result else "",
        result.model_version if result else "",
        result.model_sha256 if result else "",
        (result.preprocessing_version or "") if result else "",
        image.error_code or "",
        image.error_message or "",
        scheme.name,
        image_code(result, scheme),
        MACULOPATHY_NOT_ASSESSED if graded else "",
        (patient.code or "") if patient else "",
        patient.outcome if patient else "",
        "" if patient is None or patient.recall_months is None else patient.recall_months,
    ]


def csv_lines(header: Sequence[str], rows: Iterable[Iterable[Any]]) -> Iterator[str]:
    """CSV text a chunk at a time: the header, then about every hundred rows."""
    buffer = io.StringIO(newline="")
    writer = SpreadsheetWriter(buffer)
    writer.writerow(header)
    for count, row in enumerate(rows, start=1):
        writer.writerow(row)
        if count % 100 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
