"""The distribution: what the wheel carries, an installed copy grading on its own, the extras."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from cli.extras import EXTRAS
from common.settings import BUNDLED_MODEL_NAME

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CODE_PACKAGES = {"api", "cli", "common", "lab", "migrations", "worker"}
# Everything but the source: a stale build/ would put files deleted since into the wheel.
_NOT_SOURCE = shutil.ignore_patterns(".*", "build", "dist", "var", "*.egg-info", "__pycache__")
# Imports of these fail as they would in an installation without the extras.
_WITHOUT_EXTRAS = (
    "import sys; sys.modules.update(tensorflow=None, matplotlib=None); "
    "from cli.main import cli; cli(prog_name='retinaq')"
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of a copy of the working tree, built as `pip wheel .` builds it."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=_NOT_SOURCE)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
        + ["-w", str(base / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = (base / "dist").glob("retinaq-*.whl")
    return path


def _requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return match.group().lower()


def _extra_requirements(extra: str) -> set[str]:
    """The distributions ``retinaq[extra]`` adds, through the extras it includes too."""
    names = set()
    for requirement in PROJECT["optional-dependencies"][extra]:
        included = re.fullmatch(r"retinaq\[([a-z,]+)\]", requirement)
        if included:
            for other in included.group(1).split(","):
                names |= _extra_requirements(other)
        else:
            names.add(_requirement_name(requirement))
    return names


def test_wheel_carries_migrations_bundled_model_and_samples_but_no_tests(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        model = f"common/modelling/bundled/{BUNDLED_MODEL_NAME}/model.keras"
        assert model in names, sorted(names)
        source_model = ROOT / "models" / BUNDLED_MODEL_NAME / "model.keras"
        assert archive.read(model) == source_model.read_bytes()

    versions = sorted((ROOT / "migrations" / "versions").glob("*.py"))
    assert versions
    assert {f"migrations/versions/{path.name}" for path in versions} <= names
    assert {"migrations/__init__.py", "migrations/env.py", "migrations/script.py.mako"} <= names
    assert f"common/modelling/bundled/{BUNDLED_MODEL_NAME}/manifest.json" in names
    samples = sorted((ROOT / "samples").iterdir())
    assert len(samples) > 1
    assert {f"cli/samples/{path.name}" for path in samples} <= names

    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == CODE_PACKAGES
    assert not [name for name in names if "tests" in name.split("/") or "__pycache__" in name]


def test_base_installation_has_no_tensorflow_or_matplotlib() -> None:
    base = {_requirement_name(requirement) for requirement in PROJECT["dependencies"]}
    assert not base & {"tensorflow", "keras", "matplotlib"}
    assert {"tensorflow", "matplotlib"} <= _extra_requirements("worker")
    assert _extra_requirements("worker") <= _extra_requirements("lab")
    assert _extra_requirements("lab") <= _extra_requirements("dev")


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_the_commands_check_for_what_each_extra_installs(extra: str) -> None:
    # Module and distribution names coincide for everything the extras name.
    assert set(EXTRAS[extra]) <= _extra_requirements(extra)


@pytest.mark.parametrize(
    ("argv", "extra"),
    [
        (["worker"], "worker"),
        (["demo"], "worker"),
        (["train", "--out", "model"], "lab"),
        (["evaluate", str(ROOT / "models" / BUNDLED_MODEL_NAME)], "lab"),
    ],
)
def test_a_command_without_its_extra_names_the_extra_in_one_line(
    argv: list[str], extra: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETINAQ_")}
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTRAS, *argv],
        cwd=tmp_path,
        env={**env, "RETINAQ_VAR_DIR": str(tmp_path / "var")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        f"Error: retinaq {argv[0]} needs the {extra} extra (tensorflow, matplotlib not "
        f"installed): pip install 'retinaq[{extra}]'"
    ]
    assert not list(tmp_path.iterdir()), "the command ran before refusing"


def test_the_console_runs_without_the_extras(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETINAQ_")}
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTRAS, "db", "upgrade"],
        cwd=tmp_path,
        env={**env, "RETINAQ_VAR_DIR": str(tmp_path / "var")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "database is at head" in result.stdout
    assert (tmp_path / "var" / "retinaq.sqlite3").is_file()


@pytest.mark.slow
def test_installed_wheel_grades_the_demo_batch_outside_the_checkout(
    wheel: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETINAQ_")}
    # The dependencies come from this environment; retinaq only from the installed copy.
    env.update(PYTHONPATH=os.pathsep.join([str(site), sysconfig.get_paths()["purelib"]]))

    probe = (
        "import json, api, cli, common, lab, migrations, worker\n"
        "from cli.demo import SAMPLES_DIR\n"
        "from common.db.schema import migrations_dir\n"
        "from common.settings import get_settings\n"
        "packages = [m.__path__[0] for m in (api, cli, common, lab, migrations, worker)]\n"
        "data = [str(SAMPLES_DIR), str(migrations_dir()), str(get_settings().model_file)]\n"
        "print(json.dumps(packages + data))\n"
    )
    located = subprocess.run(
        [sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert located.returncode == 0, located.stdout + located.stderr
    for path in json.loads(located.stdout):
        assert Path(path).resolve().is_relative_to(site.resolve()), path

    demo = subprocess.run(
        [sys.executable, "-m", "cli", "demo"],
        cwd=elsewhere,
        env={**env, "COLUMNS": "160"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    var = elsewhere / "var" / "demo"
    logs = "".join(p.read_text() for p in var.glob("*.log")) if var.is_dir() else ""
    assert demo.returncode == 0, demo.stdout + demo.stderr + logs
    with (var / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    samples = sorted(path.name for path in (site / "cli" / "samples").glob("*.jpg"))
    assert sorted(row["filename"] for row in rows) == samples
    assert all(row["state"] == "graded" and row["grade_name"] for row in rows)
    assert "Traceback" not in (var / "worker.log").read_text()
