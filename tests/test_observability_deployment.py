"""What an operator of the deployment sees: Flower on the task events, JSON logs, and a worker
liveness check that a worker busy with a long task passes."""

from __future__ import annotations

import re

import pytest

from common.queue import make_celery
from common.settings import Settings
from tests.support import REPO_ROOT
from tests.test_deployment import (
    COMPOSE,
    DOCKERFILE,
    REQUIRED,
    SERVICES,
    WORKERS,
    MissingVariable,
    _environment,
    interpolate,
)

FLOWER = SERVICES["flower"]


def test_flower_is_pinned_and_reads_the_broker_the_services_use() -> None:
    image, _, tag = FLOWER["image"].partition(":")
    assert image == "mher/flower"
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), "pin a release, never latest"
    [broker] = [a.removeprefix("--broker=") for a in FLOWER["command"] if a.startswith("--broker=")]
    assert broker == _environment("api")["RETINAQ_BROKER_URL"]
    assert FLOWER["depends_on"]["redis"] == {"condition": "service_healthy"}


def test_flower_listens_on_loopback_only_behind_basic_auth_from_the_environment() -> None:
    assert FLOWER["ports"] == ["127.0.0.1:5555:5555"]
    env = _environment("flower")
    assert env["FLOWER_BASIC_AUTH"] == REQUIRED["RETINAQ_FLOWER_BASIC_AUTH"]
    # No default password: compose refuses to start without one.
    present = {k: v for k, v in REQUIRED.items() if k != "RETINAQ_FLOWER_BASIC_AUTH"}
    with pytest.raises(MissingVariable, match="RETINAQ_FLOWER_BASIC_AUTH"):
        interpolate(COMPOSE, present)


def test_celery_apps_send_the_task_events_flower_shows(tmp_path) -> None:
    settings = Settings(var_dir=tmp_path, broker_url="redis://127.0.0.1:6379/0")
    conf = make_celery(settings).conf
    assert conf.worker_send_task_events is True
    assert conf.task_send_sent_event is True


def test_every_retinaq_service_logs_json() -> None:
    for name in ("migrate", "api", "reconciler", *WORKERS):
        assert _environment(name)["RETINAQ_LOG_FORMAT"] == "json", name


def test_worker_liveness_reads_the_heartbeat_file_never_a_ping() -> None:
    """A solo worker mid-task cannot answer ``celery inspect ping``; the heartbeat thread can."""
    checked = [
        REPO_ROOT / "Dockerfile",
        REPO_ROOT / "docker-compose.yml",
        REPO_ROOT / "docker-compose.workers.yml",
        *sorted((REPO_ROOT / "deploy" / "kubernetes").rglob("*.yaml")),
    ]
    for path in checked:
        commands = [
            line for line in path.read_text().splitlines() if not line.strip().startswith("#")
        ]
        assert not [line for line in commands if "inspect ping" in line], path
    worker_stage = DOCKERFILE[DOCKERFILE.index("AS worker\n") :]
    assert "st_mtime" in worker_stage and "/tmp/retinaq-worker.heartbeat" in worker_stage
    for name in WORKERS:
        assert "healthcheck" not in SERVICES[name], f"{name} must keep the image's heartbeat check"
        assert "--heartbeat-file" in SERVICES[name]["command"], name
