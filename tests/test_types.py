"""Types are checked, not only written: mypy runs here over common/ and api/ with the settings
in pyproject.toml, so `make test` (and CI) fail on a type error, as `make lint` does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_common_and_api_type_check() -> None:
    # The venv's own mypy, so the test checks with the version and stubs pyproject pins; no
    # arguments, so it checks what [tool.mypy] names, exactly as `make lint` does.
    mypy = Path(sys.executable).parent / "mypy"
    result = subprocess.run(
        [str(mypy)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Success: no issues found" in output, output
