"""Client paths: the one normalisation, and the rule matching metadata rows to files."""

from __future__ import annotations

import pytest

from common.filenames import relative_path, resolve_rows


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        ("left.jpg", "left.jpg"),
        ("P001/left.jpg", "P001/left.jpg"),
        ("P001\\left.jpg", "P001/left.jpg"),
        ("/abs/P001/left.jpg", "abs/P001/left.jpg"),
        ("../../etc/passwd", "etc/passwd"),
        ("P001/./../left.jpg", "P001/left.jpg"),
        ("a//b/", "a/b"),
        ("..\x00/x.jpg", "x.jpg"),
        ("P0\x0701/le\x00ft.jpg", "P001/left.jpg"),
        (" P001 / left.jpg ", "P001/left.jpg"),
        ("", "unnamed"),
        (None, "unnamed"),
        ("../..", "unnamed"),
        ("a" * 254 + "/b.jpg", "a" * 254),
        ("x" * 300, "x" * 255),
    ],
)
def test_relative_path_normalisation(raw: str | None, kept: str) -> None:
    assert relative_path(raw) == kept


@pytest.mark.parametrize(
    ("keys", "paths", "matches", "unmatched", "ambiguous"),
    [
        # Folder-per-patient trees: full paths match exactly.
        (
            ["P001/left.jpg", "P002/left.jpg"],
            ["P001/left.jpg", "P002/left.jpg"],
            {"P001/left.jpg": "P001/left.jpg", "P002/left.jpg": "P002/left.jpg"},
            [],
            [],
        ),
        # A bare name matches the one file that has it ...
        (["left.jpg"], ["P001/left.jpg", "P002/right.jpg"], {"P001/left.jpg": "left.jpg"}, [], []),
        # ... and never one of two.
        (["left.jpg"], ["P001/left.jpg", "P002/left.jpg"], {}, [], ["P001/left.jpg"]),
        # The same path sent twice cannot take one row.
        (["left.jpg"], ["left.jpg", "left.jpg"], {}, [], ["2 files"]),
        # An exact path wins over base names.
        (["left.jpg"], ["left.jpg", "P002/left.jpg"], {"left.jpg": "left.jpg"}, [], []),
        # Two rows for one file.
        (
            ["P001/left.jpg", "left.jpg"],
            ["P001/left.jpg"],
            {"P001/left.jpg": "P001/left.jpg"},
            [],
            ["both describe"],
        ),
        # A path key never falls back to base names.
        (["P003/left.jpg"], ["P001/left.jpg"], {}, ["P003/left.jpg"], []),
        (["ghost.jpg"], ["a.jpg"], {}, ["ghost.jpg"], []),
    ],
)
def test_rows_resolve_to_one_file_or_are_refused(
    keys: list[str],
    paths: list[str],
    matches: dict[str, str],
    unmatched: list[str],
    ambiguous: list[str],
) -> None:
    resolution = resolve_rows(keys, paths)
    assert resolution.matches == matches
    assert resolution.unmatched == unmatched
    assert len(resolution.ambiguous) == len(ambiguous)
    for sentence, expected in zip(resolution.ambiguous, ambiguous, strict=True):
        assert expected in sentence
