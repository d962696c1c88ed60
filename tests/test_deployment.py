"""docker-compose.yml cannot run here (no Docker engine), so its structure is checked by reading."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_all_services_are_present() -> None:
    assert set(SERVICES) == {
        "postgres",
        "redis",
        "migrate",
        "api",
        "proxy",
        "worker",
        "heatmap-worker",
        "reconciler",
    }


def test_services_needing_the_database_wait_for_the_migration() -> None:
    for name in ("api", "worker", "heatmap-worker", "reconciler"):
        env = SERVICES[name]["environment"]
        assert env["RETINAQ_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert SERVICES[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert SERVICES["migrate"]["command"] == ["retinaq", "db", "upgrade"]


def test_worker_reserves_a_gpu_and_can_scale() -> None:
    worker = SERVICES["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    # --scale needs no fixed container name or host port.
    assert "container_name" not in worker
    assert "ports" not in worker


def test_heat_maps_run_on_workers_of_their_own() -> None:
    assert SERVICES["worker"]["command"] == ["retinaq", "worker", "--serve", "grading"]
    assert SERVICES["heatmap-worker"]["command"] == ["retinaq", "worker", "--serve", "heatmaps"]


def test_every_long_running_service_has_a_healthcheck() -> None:
    for name in ("postgres", "redis", "api", "worker", "heatmap-worker"):
        assert SERVICES[name]["healthcheck"]["test"], name


def test_api_and_worker_share_the_image_store() -> None:
    for name in ("api", "worker", "heatmap-worker"):
        assert "images:/data/images" in SERVICES[name]["volumes"]
        assert SERVICES[name]["environment"]["RETINAQ_STORAGE_DIR"] == "/data/images"
    assert "images" in COMPOSE["volumes"]


def test_api_runs_gunicorn_through_the_cli() -> None:
    assert SERVICES["api"]["command"][:2] == ["retinaq", "api"]


def test_redis_keeps_tasks_across_restarts_and_never_evicts() -> None:
    command = SERVICES["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "everysec"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_reconciler_runs_the_cli_loop() -> None:
    assert SERVICES["reconciler"]["command"] == ["retinaq", "reconcile"]
