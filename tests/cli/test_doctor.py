"""``retinaq doctor``: every check passes on the test stack, and each failure is named."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.main import cli
from common.settings import Settings, get_settings
from tests.cli.test_admin_operations import cli_environment
from tests.support import REPO_ROOT, STORES, free_port, scratch_database


@pytest.fixture
def model_copy(tmp_path: Path, registry_model: Callable[..., Path]) -> Path:
    """A registry of one model, a copy this test may damage."""
    registry_model(tmp_path / "models", "screening-a", version="1.0.0")
    return tmp_path / "models"


@pytest.fixture
def doctor(
    settings: Settings, model_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Result]]:
    """``retinaq doctor`` with the test's settings; keyword arguments override variables."""
    base = {
        **cli_environment(settings),
        "RETINAQ_MODELS_DIR": str(model_copy),
        "RETINAQ_MODEL_NAME": "screening-a",
    }
    monkeypatch.delenv("RETINAQ_MODEL_PATH", raising=False)
    monkeypatch.delenv("RETINAQ_EXPECT_GPU", raising=False)

    def run(**overrides: str) -> Result:
        for name, value in {**base, **overrides}.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        return CliRunner().invoke(cli, ["doctor"])

    yield run
    get_settings.cache_clear()


def _lines(result: Result) -> dict[str, tuple[str, str]]:
    """check name -> (status, reason)."""
    rows = {}
    for line in result.stdout.splitlines():
        status, name, reason = line.split(maxsplit=2)
        rows[name] = (status, reason)
    return rows


@pytest.mark.parametrize("storage", STORES, indirect=True)
def test_every_check_passes_on_the_test_stack(
    doctor: Callable[..., Result], settings: Settings
) -> None:
    result = doctor()
    assert result.exit_code == 0, result.output
    lines = _lines(result)
    assert list(lines) == ["database", "broker", "storage", "model", "gpu"]
    assert [status for status, _ in lines.values()] == ["ok", "ok", "ok", "ok", "skip"]
    assert settings.storage_url in lines["storage"][1]
    assert "screening-a 1.0.0 matches its manifest" in lines["model"][1]
    assert "no GPU expected" in lines["gpu"][1]


def test_a_wrong_database_url_fails_the_database_check(
    doctor: Callable[..., Result], database_url: str
) -> None:
    wrong = database_url.replace("127.0.0.1:5432", f"127.0.0.1:{free_port()}")
    assert wrong != database_url
    result = doctor(RETINAQ_DATABASE_URL=wrong)
    assert result.exit_code == 1
    status, reason = _lines(result)["database"]
    assert status == "FAIL" and "cannot connect" in reason
    assert "database" in result.stderr
    # The others still run, and the model falls back to the settings' choice.
    assert _lines(result)["storage"][0] == "ok"
    assert "could not say which is activated" in _lines(result)["model"][1]


def test_an_unmigrated_database_fails_the_database_check(
    doctor: Callable[..., Result], postgres_server_url: str
) -> None:
    with scratch_database(postgres_server_url, "retinaq_doctor") as empty:
        result = doctor(RETINAQ_DATABASE_URL=empty)
    assert result.exit_code == 1
    status, reason = _lines(result)["database"]
    assert status == "FAIL" and "retinaq db upgrade" in reason


def test_an_unreachable_broker_fails_the_broker_check(doctor: Callable[..., Result]) -> None:
    result = doctor(RETINAQ_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert result.exit_code == 1
    status, reason = _lines(result)["broker"]
    assert status == "FAIL" and "cannot connect" in reason
    assert _lines(result)["database"][0] == "ok"


def _read_only_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    (folder / "tmp").mkdir(parents=True)
    for path in (folder / "tmp", folder):
        path.chmod(stat.S_IRUSR | stat.S_IXUSR)
    return folder


def _folder_under_a_file(tmp_path: Path) -> Path:
    """Unwritable even for root: a regular file stands where a folder must be."""
    (tmp_path / "a-file").write_bytes(b"")
    return tmp_path / "a-file" / "images"


@pytest.mark.parametrize("make", [_read_only_folder, _folder_under_a_file])
def test_an_unwritable_store_fails_the_storage_check(
    doctor: Callable[..., Result], tmp_path: Path, make: Callable[[Path], Path]
) -> None:
    if make is _read_only_folder and os.geteuid() == 0:
        pytest.skip("root writes through a read-only folder")
    folder = make(tmp_path)
    try:
        result = doctor(RETINAQ_STORAGE_URL=folder.as_uri())
    finally:
        for path in (tmp_path / "images", tmp_path / "images" / "tmp"):
            if path.is_dir():
                path.chmod(stat.S_IRWXU)
    assert result.exit_code == 1
    status, reason = _lines(result)["storage"]
    assert status == "FAIL" and folder.as_uri() in reason
    assert "Error" in reason


def test_an_unreachable_s3_store_fails_the_storage_check(doctor: Callable[..., Result]) -> None:
    result = doctor(
        RETINAQ_STORAGE_URL="s3://no-such-bucket/images",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}",
        AWS_ACCESS_KEY_ID="nobody",
        AWS_SECRET_ACCESS_KEY="nothing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_MAX_ATTEMPTS="1",
    )
    assert result.exit_code == 1
    assert _lines(result)["storage"][0] == "FAIL"


def test_a_tampered_model_file_fails_the_model_check(
    doctor: Callable[..., Result], model_copy: Path
) -> None:
    with (model_copy / "screening-a" / "model.keras").open("ab") as file:
        file.write(b"tampered")
    result = doctor()
    assert result.exit_code == 1
    status, reason = _lines(result)["model"]
    assert status == "FAIL" and "has SHA-256" in reason and "but its manifest says" in reason


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this host has a GPU")
def test_an_expected_gpu_that_is_missing_fails_the_gpu_check() -> None:
    """In a process of its own: TensorFlow is imported for this check only."""
    env = {**os.environ, "RETINAQ_EXPECT_GPU": "true", "CUDA_VISIBLE_DEVICES": ""}
    script = (
        "from cli.doctor import check_gpu, _Findings; from common.settings import Settings; "
        "c = check_gpu(Settings(), _Findings()); print(c.status, c.reason)"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("FAIL") and "sees no GPU" in last


def test_settings_that_do_not_validate_fail_in_one_line(doctor: Callable[..., Result]) -> None:
    result = doctor(RETINAQ_STORAGE_URL="ftp://example.org/images")
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "FAIL  settings  Value error, RETINAQ_STORAGE_URL must be file:///folder or "
        "s3://bucket/prefix"
    ]


def test_a_malformed_database_url_is_a_failed_check_not_a_traceback(
    doctor: Callable[..., Result],
) -> None:
    result = doctor(RETINAQ_DATABASE_URL="not a url")
    assert result.exit_code == 1
    status, reason = _lines(result)["database"]
    assert status == "FAIL" and "Could not parse" in reason
    assert result.exception is None or isinstance(result.exception, SystemExit)
