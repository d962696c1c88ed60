"""The CLI's CSV writers: result files safe in a spreadsheet, metadata sent as given."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from api.uploads import ImageMetadata, parse_metadata_csv
from cli.client import RESULT_COLUMNS, write_results_csv
from cli.csv_export import metadata_csv, neutralise


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        ("=1+1", "'=1+1"),
        ("+SUM(1+1).jpg", "'+SUM(1+1).jpg"),
        ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("-", "'-"),
        ("P001", "P001"),
        ("left.jpg", "left.jpg"),
        ("a=b", "a=b"),
        ("", ""),
        (None, ""),
        # Numbers cannot be formulas and stay numbers.
        (3, 3),
        (0.25, 0.25),
        ("-0.5", "-0.5"),
        ("+3", "+3"),
        ("-1e-3", "-1e-3"),
    ],
)
def test_cells_that_a_spreadsheet_would_run_are_prefixed_with_a_quote(
    cell: Any, written: Any
) -> None:
    assert neutralise(cell) == written


def _result(filename: str, patient_id: str, message: str) -> dict[str, Any]:
    return {
        "image_id": "0190",
        "filename": filename,
        "patient_id": patient_id,
        "laterality": "L",
        "state": "failed",
        "grade": 2,
        "expected_grade": -0.25,
        "confidence": 0.5,
        "error": {"code": "corrupt_image", "message": message},
    }


def test_the_results_writer_the_demo_uses_neutralises_every_text_cell(tmp_path: Path) -> None:
    rows = [
        _result("+SUM(1+1).jpg", '=HYPERLINK("http://x","y")', "\tcell"),
        _result("@a.jpg", "-1+1", "\rcell"),
    ]
    out = write_results_csv(rows, tmp_path / "deep" / "results.csv")
    with out.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == RESULT_COLUMNS
        read = list(reader)
    assert [r["filename"] for r in read] == ["'+SUM(1+1).jpg", "'@a.jpg"]
    assert [r["patient_id"] for r in read] == ['\'=HYPERLINK("http://x","y")', "'-1+1"]
    assert [r["error_message"] for r in read] == ["'\tcell", "'\rcell"]
    assert {r["grade"] for r in read} == {"2"}
    assert {r["expected_grade"] for r in read} == {"-0.250"}, "a negative number stays numeric"


def test_the_metadata_sent_to_the_api_is_read_back_exactly_as_given() -> None:
    rows = [
        {"filename": "P001/left.jpg", "patient_id": '=HYPERLINK("http://x","y")'},
        {"filename": "a,b.jpg", "patient_id": "-2+3", "laterality": "R"},
        {"filename": "+SUM(1+1).jpg", "patient_id": "@P,1", "laterality": "L"},
    ]
    assert parse_metadata_csv(metadata_csv(rows).encode()) == {
        "P001/left.jpg": ImageMetadata('=HYPERLINK("http://x","y")', None),
        "a,b.jpg": ImageMetadata("-2+3", "R"),
        "+SUM(1+1).jpg": ImageMetadata("@P,1", "L"),
    }
