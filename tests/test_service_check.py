"""`make test` stops at once, with one clear message, when PostgreSQL or Redis is missing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from common.settings import PROJECT_ROOT


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_missing_redis_stops_the_run_with_the_start_commands() -> None:
    env = {**os.environ, "RETINAQ_TEST_REDIS_URL": f"redis://127.0.0.1:{_closed_port()}/0"}
    completed = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "tests/test_deployment.py"],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 3
    assert "Redis at redis://127.0.0.1:" in output
    assert "docker compose up -d postgres redis" in output
    assert "passed" not in output
