"""`make test` needs nothing already running: with no PostgreSQL or Redis at the configured
URLs the run starts private ones and stops them at the end; only without the server
programs does it stop at once, with one clear message."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, make_url, text

from tests.support import REPO_ROOT, free_port, port_open

SERVICES_TEST = "tests/test_service_check.py::test_the_session_database_and_broker_answer"


def _pytest(env: dict[str, str], node: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", node],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_session_database_and_broker_answer(engine: Engine, redis_client: redis.Redis) -> None:
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    assert redis_client.ping()


@pytest.mark.slow
def test_with_no_servers_the_run_starts_private_ones_and_stops_them() -> None:
    env = {
        **os.environ,
        "RETINAQ_TEST_DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x",
        "RETINAQ_TEST_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
    }
    completed = _pytest(env, SERVICES_TEST, timeout=300)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    assert "1 passed" in output
    postgres = re.search(r"uses a private one at (\S+) \(in (\S+)\)", output)
    broker = re.search(r"Redis at \S+ does not answer .*private one at (\S+)", output)
    assert postgres and broker, output
    for url in (postgres[1], broker[1]):
        assert not port_open(make_url(url).port or 0), f"{url} still answers"
    assert not Path(postgres[2]).exists()


def test_without_the_server_programs_the_run_stops_with_the_start_commands(
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "RETINAQ_TEST_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "PATH": str(tmp_path),  # no redis-server to start a private Redis with
    }
    completed = _pytest(env, "tests/test_deployment.py", timeout=120)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 3
    assert "Redis at redis://127.0.0.1:" in output
    assert "a private one cannot be started: redis-server not found" in output
    assert "docker compose up -d postgres redis" in output
    assert "passed" not in output
