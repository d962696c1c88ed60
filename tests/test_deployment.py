"""docker-compose.yml and docker-compose.workers.yml cannot run here (no Docker engine), so
their structure is checked by reading."""

from __future__ import annotations

import re
from typing import Any

import yaml

from tests.support import REPO_ROOT

COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
WORKERS_FILE = yaml.safe_load((REPO_ROOT / "docker-compose.workers.yml").read_text())
EXTRA_WORKERS = WORKERS_FILE["services"]
GRADING_WORKERS = ("worker-gpu0", "worker-gpu1")
WORKERS = (*GRADING_WORKERS, "heatmap-worker")
DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()
TARGETS = re.findall(r"^FROM \S+ AS (\w+)$", DOCKERFILE, flags=re.MULTILINE)


def _gpu_ids(service: dict[str, Any]) -> list[str]:
    """The GPUs a service reserves, checking the reservation is by id and for NVIDIA GPUs."""
    [device] = service["deploy"]["resources"]["reservations"]["devices"]
    # Not `count`: every replica of a scaled service given `count: 1` gets the same GPU.
    assert set(device) == {"driver", "device_ids", "capabilities"}
    assert device["driver"] == "nvidia"
    assert device["capabilities"] == ["gpu"]
    return list(device["device_ids"])


def _heartbeat_file() -> str:
    """The file the worker image's HEALTHCHECK reads (tests/test_images.py runs it)."""
    worker_stage = DOCKERFILE[DOCKERFILE.index("AS worker\n") :]
    [path] = re.findall(r'^HEALTHCHECK .*"(/\S+)"\]$', worker_stage.replace("\\\n", ""), re.M)
    return path


def test_all_services_are_present() -> None:
    assert set(SERVICES) == {
        "postgres",
        "redis",
        "migrate",
        "api",
        "proxy",
        *WORKERS,
        "reconciler",
    }


def test_services_needing_the_database_wait_for_the_migration() -> None:
    for name in ("api", *WORKERS, "reconciler"):
        env = SERVICES[name]["environment"]
        assert env["RETINAQ_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert SERVICES[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert SERVICES["migrate"]["command"] == ["retinaq", "db", "upgrade"]


def test_each_role_builds_its_own_image() -> None:
    assert TARGETS[-2:] == ["api", "worker"]
    for name in ("migrate", "api", "reconciler"):
        assert SERVICES[name]["build"] == {"context": ".", "target": "api"}, name
        assert SERVICES[name]["image"] == "retinaq-api"
    for services, name in [(SERVICES, n) for n in WORKERS] + [
        (EXTRA_WORKERS, n) for n in EXTRA_WORKERS
    ]:
        assert services[name]["build"] == {"context": ".", "target": "worker"}, name
        assert services[name]["image"] == "retinaq-worker"
    for service in [*SERVICES.values(), *EXTRA_WORKERS.values()]:
        assert str(service.get("user", "10001")) not in ("0", "root")  # the images' user stands


def test_every_grading_worker_reserves_a_gpu_of_its_own() -> None:
    for services, names in [(SERVICES, GRADING_WORKERS), (EXTRA_WORKERS, tuple(EXTRA_WORKERS))]:
        ids = [_gpu_ids(services[name]) for name in names]
        assert all(len(one) == 1 for one in ids), ids
        assert len({one[0] for one in ids}) == len(names) >= 2, ids
        for name in names:
            # A fixed name or host port would stop a copied service from starting.
            assert "container_name" not in services[name] and "ports" not in services[name]
    # The heat-map worker is pinned too, beside a grading worker.
    [heatmap_gpu] = _gpu_ids(SERVICES["heatmap-worker"])
    assert heatmap_gpu in {_gpu_ids(SERVICES[name])[0] for name in GRADING_WORKERS}


def test_no_worker_widens_its_gpus_past_the_reservation() -> None:
    for service in [*(SERVICES[name] for name in WORKERS), *EXTRA_WORKERS.values()]:
        env = service["environment"]
        assert "NVIDIA_VISIBLE_DEVICES" not in env and "CUDA_VISIBLE_DEVICES" not in env
        assert env["RETINAQ_EXPECT_GPU"] == "true"


def test_heat_maps_run_on_workers_of_their_own() -> None:
    for name in GRADING_WORKERS:
        assert SERVICES[name]["command"][:4] == ["retinaq", "worker", "--serve", "grading"]
    for name in EXTRA_WORKERS:
        assert EXTRA_WORKERS[name]["command"][:4] == ["retinaq", "worker", "--serve", "grading"]
    command = SERVICES["heatmap-worker"]["command"]
    assert command[:4] == ["retinaq", "worker", "--serve", "heatmaps"]


def test_workers_keep_the_heartbeat_their_images_health_check_reads() -> None:
    path = _heartbeat_file()
    for service in [*(SERVICES[name] for name in WORKERS), *EXTRA_WORKERS.values()]:
        command = service["command"]
        assert command[command.index("--heartbeat-file") + 1] == path
        # Not `celery inspect ping`, which a solo worker busy with a task cannot answer.
        assert "healthcheck" not in service
        assert service["stop_grace_period"] == "2m"


def test_every_long_running_service_has_a_healthcheck() -> None:
    for name in ("postgres", "redis", "api", "proxy"):
        assert SERVICES[name]["healthcheck"]["test"], name
    # The API image's HTTP check means nothing for its services that serve no HTTP.
    for name in ("migrate", "reconciler"):
        assert SERVICES[name]["healthcheck"] == {"disable": True}
    assert "HEALTHCHECK" in DOCKERFILE[DOCKERFILE.index("AS worker\n") :]


def test_api_and_worker_share_the_image_store() -> None:
    for name in ("api", *WORKERS):
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


def test_extra_gpu_hosts_run_only_workers_against_central_services() -> None:
    assert set(WORKERS_FILE) == {"x-worker", "services"}  # no volumes, networks or servers
    for service in EXTRA_WORKERS.values():
        assert "depends_on" not in service  # PostgreSQL and Redis live elsewhere
        env = service["environment"]
        for name in ("RETINAQ_DATABASE_URL", "RETINAQ_BROKER_URL"):
            assert re.fullmatch(rf"\$\{{{name}:\?[^}}]+\}}", env[name]), env[name]
        assert "RETINAQ_SECRET_KEY" not in env  # only the API seals cursors
        # The store is a shared directory until object storage lands (NFS, for one).
        assert env["RETINAQ_STORAGE_DIR"] == "/data/images"
        [volume] = service["volumes"]
        assert re.fullmatch(r"\$\{RETINAQ_IMAGES_DIR:\?[^}]+\}:/data/images", volume), volume
        assert service["restart"] == "unless-stopped"
