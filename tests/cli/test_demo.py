"""The embedded profile end to end: the exact path `make demo` takes."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO_ROOT

pytestmark = pytest.mark.slow


def test_demo_grades_every_sample_and_shuts_down(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETINAQ_")}
    var = tmp_path / "demo"
    completed = subprocess.run(
        [sys.executable, "-m", "cli", "demo", "--var-dir", str(var)],
        env={**env, "COLUMNS": "160"},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    out = completed.stdout
    assert "Screening results" in out
    assert f"results CSV: {var / 'results.csv'}" in out.replace("\n", "")
    assert "API server stopped" in out and "worker stopped" in out

    samples = sorted(p.name for p in (REPO_ROOT / "samples").glob("*.jpg"))
    with (var / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["filename"] for r in rows) == samples
    assert all(r["state"] == "graded" for r in rows)
    assert all(r["grade_name"] for r in rows)
    assert "Traceback" not in (var / "worker.log").read_text()
    assert (var / "retinaq.sqlite3").is_file()
    assert (var / "broker" / "control").is_dir()
    assert not (REPO_ROOT / "control").exists(), "the broker wrote outside its folder"
