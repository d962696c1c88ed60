"""The retinaq command line at the level a person meets it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from cli.main import cli
from common.access.apikeys import programme_for_key
from common.db.tables import ApiKey
from common.settings import Settings
from tests.support import REPO_ROOT

SUBCOMMANDS = (
    "demo",
    "submit",
    "status",
    "results",
    "admin",
    "doctor",
    "db",
    "api",
    "worker",
    "reconcile",
    "synth",
    "train",
    "bench",
    "bench-poll",
    "export",
    "quality-eval",
    "evaluate",
)


def test_help_lists_every_subcommand_with_a_description() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "cli", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert completed.returncode == 0
    listed = {}
    in_commands = False
    for line in completed.stdout.splitlines():
        if line.strip() == "Commands:":
            in_commands = True
        elif in_commands and line.strip():
            name, _, description = line.strip().partition(" ")
            listed[name] = description.strip()
    assert set(listed) == set(SUBCOMMANDS)
    assert all(listed.values())


def test_help_does_not_import_tensorflow() -> None:
    code = "import sys; import cli.main; print('tensorflow' in sys.modules)"
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert completed.stdout.strip() == "False"


def _env(database_url: str) -> dict[str, str]:
    return {"RETINAQ_DATABASE_URL": database_url}


def test_admin_create_programme_prints_the_key_alone_on_the_last_line(
    database_url: str, sessions: sessionmaker[Session], engine: Engine, monkeypatch
) -> None:
    from common.settings import get_settings

    monkeypatch.setenv("RETINAQ_DATABASE_URL", database_url)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        result = runner.invoke(cli, ["admin", "create-programme", "Van 12"])
        assert result.exit_code == 0, result.output
        key = result.stdout.strip().splitlines()[-1]
        with sessions() as session:
            assert programme_for_key(session, key) is not None
            stored = session.scalars(select(ApiKey.key_hash)).all()
        assert key not in stored

        duplicate = runner.invoke(cli, ["admin", "create-programme", "Van 12"])
        assert duplicate.exit_code == 1
        assert "already exists" in duplicate.output

        listing = runner.invoke(cli, ["admin", "list-keys"])
        assert key[:11] in listing.output
        assert key not in listing.output

        revoked = runner.invoke(cli, ["admin", "revoke-key", key[:11]])
        assert revoked.exit_code == 0
        with sessions() as session:
            assert programme_for_key(session, key) is None
    finally:
        get_settings.cache_clear()


def test_servers_refuse_an_unmigrated_database_with_the_fix(tmp_path) -> None:
    env = {**os.environ, "RETINAQ_VAR_DIR": str(tmp_path)}
    env.pop("RETINAQ_DATABASE_URL", None)
    for command in ("api", "worker"):
        completed = subprocess.run(
            [sys.executable, "-m", "cli", command],
            env=env,
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            timeout=60,
        )
        assert completed.returncode == 1
        assert "retinaq db upgrade" in completed.stderr


def test_db_upgrade_then_status_check(tmp_path) -> None:
    env = {**os.environ, "RETINAQ_VAR_DIR": str(tmp_path)}
    env.pop("RETINAQ_DATABASE_URL", None)
    completed = subprocess.run(
        [sys.executable, "-m", "cli", "db", "upgrade"],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    assert (tmp_path / "retinaq.sqlite3").is_file()


@pytest.mark.parametrize(
    ("serve", "queues"),
    [
        ("all", "retinaq.grading,retinaq.explain"),
        ("grading", "retinaq.grading"),
        ("heatmaps", "retinaq.explain"),
    ],
)
def test_worker_consumes_the_queues_its_role_names(
    monkeypatch: pytest.MonkeyPatch, serve: str, queues: str
) -> None:
    from cli import servers

    started: list[list[str]] = []
    monkeypatch.setattr(servers, "require_schema_at_head", lambda: None)
    monkeypatch.setattr(servers, "_exec", started.append)
    monkeypatch.setattr(servers, "get_settings", lambda: Settings())
    result = CliRunner().invoke(cli, ["worker", "--serve", serve, "--concurrency", "1"])
    assert result.exit_code == 0, result.output
    (argv,) = started
    assert argv[argv.index("--queues") + 1] == queues
    assert "--pool=solo" in argv and argv[-2:] == ["--concurrency", "1"]
