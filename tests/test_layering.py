"""The layering is a contract: import-linter checks it here, so `make test` (and CI) fail on a
broken one, and the API process loads neither offline modelling nor TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Modules whose presence in the API process would mean modelling, TensorFlow or the imaging
# code leaked in: the API streams bytes and renders verdicts, it never looks at pixels.
HEAVY_FOR_THE_API = ("lab", "tensorflow", "keras", "matplotlib", "worker", "numpy", "PIL")


def test_import_contracts_are_kept() -> None:
    # The venv's own lint-imports, so the test checks with the version pyproject pins.
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint_imports), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "0 broken" in output, output


def test_importing_the_api_loads_no_modelling_or_tensorflow() -> None:
    # A fresh interpreter: this test process has long since imported TensorFlow and lab.
    probe = (
        "import json, sys\n"
        "import api\n"
        "from api import create_app\n"
        f"print(json.dumps(sorted(m for m in {HEAVY_FOR_THE_API!r} if m in sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
