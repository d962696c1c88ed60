"""The heartbeat file a container health check reads: fresh while the worker is busy."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from worker.heartbeat import Heartbeat, HeartbeatStep

INTERVAL_S = 0.05


def _age_out(path: Path) -> None:
    os.utime(path, (1, 1))  # 1970: any touch from now on is visible


def test_a_busy_main_thread_does_not_stop_the_heartbeat(tmp_path: Path) -> None:
    path = tmp_path / "heartbeat"
    heartbeat = Heartbeat(path, INTERVAL_S)
    heartbeat.start()
    try:
        assert path.is_file()  # touched at start, before the first interval
        _age_out(path)
        # Busy in Python, as a solo worker's task thread is between library calls.
        deadline = time.monotonic() + 20 * INTERVAL_S
        while time.monotonic() < deadline:
            sum(range(1000))
        assert path.stat().st_mtime > time.time() - 10
    finally:
        heartbeat.stop()


def test_a_stopped_heartbeat_lets_the_file_age(tmp_path: Path) -> None:
    path = tmp_path / "heartbeat"
    heartbeat = Heartbeat(path, INTERVAL_S)
    heartbeat.start()
    heartbeat.stop()
    _age_out(path)
    time.sleep(5 * INTERVAL_S)
    assert path.stat().st_mtime == 1


def test_an_unwritable_path_fails_at_start(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Heartbeat(tmp_path / "missing" / "heartbeat", INTERVAL_S).start()


def test_the_worker_step_runs_a_heartbeat_only_with_the_option(tmp_path: Path) -> None:
    without = HeartbeatStep(parent=None)
    assert not without.include_if(None)
    step = HeartbeatStep(parent=None, heartbeat_file=str(tmp_path / "beat"), concurrency=1)
    assert step.include_if(None)
    heartbeat = step.create(None)
    assert heartbeat.path == tmp_path / "beat"
