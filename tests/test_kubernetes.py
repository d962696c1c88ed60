"""deploy/kubernetes, rendered as ``kubectl apply -k`` would and checked without a cluster.

Every object is validated against the Kubernetes OpenAPI schemas (kubernetes-validate,
strict: unknown fields fail) and KEDA's objects against the schemas of KEDA's CRDs
(tests/data/keda); then the manifests are held to what the code and the images expect.
The kustomizations are assembled by :func:`render`, which applies the few Kustomize
features they use; where kubectl or kustomize is installed, a test holds its output equal.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import redis
import yaml
from flask import Flask
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from api.hooks.hosts import is_loopback
from common.db.tables import (
    FINISHED_BATCH_STATES,
    PENDING_IMAGE_STATES,
    Batch,
    BatchState,
    Image,
    ImageState,
)
from common.queue import make_celery, send_grading, send_heatmap_task
from common.settings import Settings
from tests.support import DATA_DIR, REPO_ROOT

KUBERNETES_DIR = REPO_ROOT / "deploy" / "kubernetes"
BASE = KUBERNETES_DIR / "base"
OVERLAY = KUBERNETES_DIR / "overlays" / "eight-gpus"
# The base with components/image-store-volume: images on a shared volume, not in a bucket.
SHARED = KUBERNETES_DIR / "overlays" / "shared-volume"
KUSTOMIZATIONS = pytest.mark.parametrize(
    "kustomization", [BASE, OVERLAY, SHARED], ids=["base", "overlay", "shared-volume"]
)
KEDA_CRDS = DATA_DIR / "keda"
# An older Kubernetes still run widely, and the newest one kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.32.0", kubernetes_validate.latest_version())
WORKERS = {"retinaq-grading-worker": "grading", "retinaq-heatmap-worker": "heatmaps"}
API_IMAGE_PODS = ("retinaq-api", "retinaq-reconciler", "retinaq-migrate")
# The pods whose command opens the image store (common.storage.open_store).
STORE_PODS = ("retinaq-api", "retinaq-reconciler", *WORKERS)
STORE_LABEL = "retinaq.example.org/image-store"
# The AWS chain's variables the deployment may set (boto3 reads AWS_DEFAULT_REGION, not
# AWS_REGION, for the region).
AWS_VARIABLES = {
    "AWS_ENDPOINT_URL",
    "AWS_DEFAULT_REGION",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
}
UID = 10001
# What the test's renderer applies; a kustomization using more fails loudly.
RENDERED_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "components",
    "patches",
    "namespace",
    "images",
}

Object = dict[str, Any]


def render(directory: Path) -> list[Object]:
    """The objects ``kubectl kustomize directory`` outputs, for the features used here."""
    return _build(directory, [])


def _build(directory: Path, objects: list[Object]) -> list[Object]:
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(spec) - RENDERED_FIELDS
    assert not unknown, f"{directory}: the test's renderer does not apply {sorted(unknown)}"
    objects = list(objects)
    for entry in spec.get("resources", []):
        path = directory / entry
        if path.is_dir():
            objects += _build(path, [])
        else:
            objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for entry in spec.get("components", []):
        objects = _build(directory / entry, objects)
    for patch in spec.get("patches", []):
        for obj in objects:
            if _targeted(obj, patch["target"]):
                for operation in yaml.safe_load(patch["patch"]):
                    _json_patch(obj, operation)
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] != "Namespace":
                obj["metadata"]["namespace"] = spec["namespace"]
    for image in spec.get("images", []):
        for obj in objects:
            for container in _containers(obj):
                if container["image"].partition(":")[0] == image["name"]:
                    container["image"] = f"{image['newName']}:{image['newTag']}"
    return objects


def _targeted(obj: Object, target: dict[str, str]) -> bool:
    """A patch target: kind, name and an equality label selector, as given."""
    assert set(target) <= {"kind", "name", "labelSelector"}
    labels = obj["metadata"].get("labels", {})
    wanted = dict(term.split("=") for term in target.get("labelSelector", "").split(",") if term)
    return (
        obj["kind"] == target.get("kind", obj["kind"])
        and obj["metadata"]["name"] == target.get("name", obj["metadata"]["name"])
        and all(labels.get(key) == value for key, value in wanted.items())
    )


def _json_patch(obj: Object, operation: dict[str, Any]) -> None:
    """One RFC 6902 ``add`` or ``replace``."""
    *parents, last = [
        p.replace("~1", "/").replace("~0", "~") for p in operation["path"].split("/")[1:]
    ]
    node: Any = obj
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    value = copy.deepcopy(operation["value"])
    if operation["op"] == "add" and isinstance(node, list):
        node.insert(len(node) if last == "-" else int(last), value)
    elif operation["op"] in ("add", "replace"):
        if operation["op"] == "replace":
            assert last in node, f"replace of missing {operation['path']}"
        node[last] = value
    else:
        raise AssertionError(f"the test's renderer does not apply {operation['op']}")


def _pod_spec(obj: Object) -> Object | None:
    return obj["spec"]["template"]["spec"] if obj["kind"] in ("Deployment", "Job") else None


def _containers(obj: Object) -> list[Object]:
    spec = _pod_spec(obj)
    return [] if spec is None else [*spec.get("initContainers", []), *spec["containers"]]


OBJECTS = render(BASE)


def _one(kind: str, name: str) -> Object:
    [found] = [o for o in OBJECTS if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def _workloads() -> dict[str, Object]:
    return {o["metadata"]["name"]: o for o in OBJECTS if _pod_spec(o) is not None}


def _container(name: str) -> Object:
    [container] = _workloads()[name]["spec"]["template"]["spec"]["containers"]
    return container


def _config() -> dict[str, str]:
    return dict(_one("ConfigMap", "retinaq-config")["data"])


def _triggers(name: str) -> list[Object]:
    return list(_one("ScaledObject", name)["spec"]["triggers"])


# Schemas


def _closed(schema: Any) -> Any:
    """A CRD schema that refuses unknown fields, as ``kubectl apply`` (strict) does.

    A CRD's structural schema prunes fields it does not know instead of refusing them, so
    a misspelt ``minReplicaCont`` would pass plain JSON Schema validation unnoticed.
    """
    if isinstance(schema, list):
        return [_closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {key: _closed(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        closed["additionalProperties"] = False
    return closed


def _crd_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """``(apiVersion, kind)`` → a validator of KEDA's schema for it."""
    validators = {}
    for path in sorted(KEDA_CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            schema = _closed(version["schema"]["openAPIV3Schema"])
            api_version = f"{crd['spec']['group']}/{version['name']}"
            validators[(api_version, crd["spec"]["names"]["kind"])] = (
                jsonschema.Draft202012Validator(schema)
            )
    return validators


CRD_VALIDATORS = _crd_validators()


def _crd_errors(obj: Object) -> list[str]:
    validator = CRD_VALIDATORS[(obj["apiVersion"], obj["kind"])]
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)
    ]


def _is_custom(obj: Object) -> bool:
    return str(obj["apiVersion"]).startswith("keda.sh/")


@KUSTOMIZATIONS
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_is_valid_for_kubernetes(kustomization: Path, version: str) -> None:
    objects = [o for o in render(kustomization) if not _is_custom(o)]
    assert {o["kind"] for o in objects} >= {"Deployment", "Job", "Service", "ConfigMap", "Secret"}
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


@KUSTOMIZATIONS
def test_keda_objects_are_valid_for_kedas_crds(kustomization: Path) -> None:
    objects = [o for o in render(kustomization) if _is_custom(o)]
    assert sorted(o["kind"] for o in objects) == [
        "ScaledObject",
        "ScaledObject",
        "TriggerAuthentication",  # PostgreSQL
        "TriggerAuthentication",  # Redis
    ]
    for obj in objects:
        assert _crd_errors(obj) == [], obj["metadata"]["name"]


def test_the_schema_checks_refuse_what_they_should() -> None:
    deployment = copy.deepcopy(_one("Deployment", "retinaq-api"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)
    deployment = copy.deepcopy(_one("Deployment", "retinaq-api"))
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)

    misspelt = copy.deepcopy(_one("ScaledObject", "retinaq-grading-worker"))
    misspelt["spec"]["minReplicaCont"] = misspelt["spec"].pop("minReplicaCount")
    assert any("minReplicaCont" in error for error in _crd_errors(misspelt))
    mistyped = copy.deepcopy(_one("ScaledObject", "retinaq-grading-worker"))
    mistyped["spec"]["triggers"][0]["metadata"]["listLength"] = 2  # metadata values are strings
    assert _crd_errors(mistyped) != []


def _kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@pytest.mark.skipif(_kustomize_command() is None, reason="neither kustomize nor kubectl here")
@KUSTOMIZATIONS
def test_kustomize_renders_what_the_tests_check(kustomization: Path) -> None:
    command = _kustomize_command()
    assert command is not None
    output = subprocess.run(
        [*command, str(kustomization)], capture_output=True, text=True, check=True, timeout=120
    ).stdout

    def key(obj: Object) -> tuple[str, str, str]:
        meta = obj["metadata"]
        return (obj["kind"], meta.get("namespace", ""), meta["name"])

    assert sorted(yaml.safe_load_all(output), key=key) == sorted(render(kustomization), key=key)


# Pods


def test_every_pod_runs_as_uid_10001_on_a_read_only_root() -> None:
    for name, workload in _workloads().items():
        spec = workload["spec"]["template"]["spec"]
        context = spec["securityContext"]
        assert context["runAsNonRoot"] is True, name
        assert (context["runAsUser"], context["runAsGroup"]) == (UID, UID), name
        assert spec["automountServiceAccountToken"] is False, name
        assert {"name": "tmp", "emptyDir": {}} in spec["volumes"], name
        for container in _containers(workload):
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], name


def test_every_container_states_its_resources() -> None:
    for name, workload in _workloads().items():
        for container in _containers(workload):
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), name
            assert "memory" in resources["limits"], name


def test_each_worker_pod_holds_exactly_one_gpu_and_no_other_pod_any() -> None:
    for name in _workloads():
        resources = _container(name)["resources"]
        if name in WORKERS:
            assert resources["limits"]["nvidia.com/gpu"] == 1, name
            assert resources["requests"]["nvidia.com/gpu"] == 1, name
            assert "--pool" not in " ".join(_container(name)["args"]), "one process per GPU"
        else:
            assert "nvidia.com/gpu" not in {*resources["requests"], *resources["limits"]}, name


def test_workers_decode_on_the_cores_they_request() -> None:
    for name in WORKERS:
        container = _container(name)
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["RETINAQ_DECODE_THREADS"] == str(container["resources"]["requests"]["cpu"])


def test_each_role_runs_its_command_from_its_image() -> None:
    assert _container("retinaq-migrate")["args"] == ["retinaq", "db", "upgrade"]
    assert _container("retinaq-reconciler")["args"] == ["retinaq", "reconcile"]
    assert _container("retinaq-api")["args"][:2] == ["retinaq", "api"]
    for name in API_IMAGE_PODS:
        assert _container(name)["image"] == "retinaq-api", name
    for name, serve in WORKERS.items():
        args = _container(name)["args"]
        assert args[:4] == ["retinaq", "worker", "--serve", serve], name
        assert _container(name)["image"] == "retinaq-worker", name
    assert _one("Job", "retinaq-migrate")["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_one_reconciler_even_during_a_rollout() -> None:
    spec = _one("Deployment", "retinaq-reconciler")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}


def _dockerfile_worker_healthcheck() -> list[str]:
    """The worker image's HEALTHCHECK command, which tests/test_images.py runs for real."""
    dockerfile = (REPO_ROOT / "Dockerfile").read_text().replace("\\\n", "")
    worker_stage = dockerfile[dockerfile.index("AS worker\n") :]
    [line] = [ln for ln in worker_stage.splitlines() if ln.startswith("HEALTHCHECK ")]
    return list(yaml.safe_load(line[line.index("CMD ") + 4 :]))


def test_worker_probes_read_the_heartbeat_the_worker_writes() -> None:
    check = _dockerfile_worker_healthcheck()
    for name in WORKERS:
        container = _container(name)
        args = container["args"]
        heartbeat = args[args.index("--heartbeat-file") + 1]
        assert check[-1] == heartbeat, name
        assert heartbeat.startswith("/tmp/"), "the only writable directory"
        for probe in ("startupProbe", "livenessProbe"):
            assert container[probe]["exec"]["command"] == check, (name, probe)
        # A busy worker touches it every 10 s; failing takes a minute and more without.
        liveness = container["livenessProbe"]
        assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 60, name


def test_workers_serve_metrics_where_their_scrape_annotations_say() -> None:
    for name in WORKERS:
        template = _workloads()[name]["spec"]["template"]
        container = _container(name)
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        settings = Settings.model_validate({"metrics_port": env["RETINAQ_METRICS_PORT"]})
        [port] = [p for p in container["ports"] if p["name"] == "metrics"]
        annotations = template["metadata"]["annotations"]
        assert port["containerPort"] == settings.metrics_port == 9100, name
        assert annotations["prometheus.io/port"] == str(settings.metrics_port), name
        assert annotations["prometheus.io/scrape"] == "true", name


def test_workers_have_time_to_finish_their_task_on_scale_in() -> None:
    shutdown = Settings.model_validate(
        {"shutdown_timeout_s": _config()["RETINAQ_SHUTDOWN_TIMEOUT_S"]}
    )
    for name in WORKERS:
        grace = _workloads()[name]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= shutdown.shutdown_timeout_s + 30, name


def _api_probes() -> list[Object]:
    container = _container("retinaq-api")
    return [container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]]


def test_api_probes_readiness_and_liveness_on_its_port() -> None:
    container = _container("retinaq-api")
    ready, live = _api_probes()
    assert (ready["path"], live["path"]) == ("/readyz", "/healthz")
    [port] = container["ports"]
    args = container["args"]
    assert port["containerPort"] == int(args[args.index("--port") + 1])
    assert {ready["port"], live["port"]} == {port["name"]}
    service = _one("Service", "retinaq-api")
    assert (
        service["spec"]["selector"]
        == _one("Deployment", "retinaq-api")["spec"]["selector"]["matchLabels"]
    )
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [port["name"]]


@pytest.fixture
def api_as_configured(make_app: Callable[..., Flask]) -> Flask:
    """The API with the ConfigMap's public URL and proxy hops, on the test database."""
    config = _config()
    return make_app(
        public_url=config["RETINAQ_PUBLIC_URL"], proxy_hops=int(config["RETINAQ_PROXY_HOPS"])
    )


def test_the_api_answers_its_probes_from_the_kubelet(api_as_configured: Flask) -> None:
    client = api_as_configured.test_client()
    pod = {"REMOTE_ADDR": "10.1.2.3"}
    for probe in _api_probes():
        headers = {h["name"]: h["value"] for h in probe["httpHeaders"]}
        assert is_loopback(headers["Host"])
        response = client.get(probe["path"], headers=headers, environ_base=pod)
        assert response.status_code == 200, response.get_data(as_text=True)
        # What the kubelet would send without the header: the pod's address, not public.
        refused = client.get(probe["path"], headers={"Host": "10.1.2.3:8000"}, environ_base=pod)
        assert refused.status_code == 400


# Settings and storage


def test_settings_come_from_the_config_map_and_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config()
    secret = _one("Secret", "retinaq-secrets")["stringData"]
    assert set(secret) == {
        "RETINAQ_DATABASE_URL",
        "RETINAQ_BROKER_URL",
        "RETINAQ_SECRET_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    }
    assert all("CHANGE-ME" in value for value in secret.values()), "placeholders only"
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(config), "secrets apart"
    for name, workload in _workloads().items():
        for container in _containers(workload):
            assert container["envFrom"] == [
                {"configMapRef": {"name": "retinaq-config"}},
                {"secretRef": {"name": "retinaq-secrets"}},
            ], name
    variables = {**config, **secret}
    for name in WORKERS:
        variables |= {e["name"]: e["value"] for e in _container(name)["env"] if e["name"] != "HOME"}
    known = {f"RETINAQ_{field.upper()}" for field in Settings.model_fields} | AWS_VARIABLES
    assert set(variables) <= known, "a misspelt setting is silently ignored"
    for variable, value in variables.items():
        monkeypatch.setenv(variable, value)
    settings = Settings()
    assert settings.database_url.startswith("postgresql+psycopg://")
    assert settings.broker_url.startswith("redis://")
    assert settings.secret_key is not None
    assert settings.storage_url.startswith("s3://") and settings.storage_dir is None


def _spec(objects: list[Object], name: str) -> Object:
    [found] = [o for o in objects if o["metadata"]["name"] == name and _pod_spec(o) is not None]
    spec = _pod_spec(found)
    assert spec is not None
    return spec


def test_the_store_label_marks_exactly_the_pods_that_open_the_store() -> None:
    labelled = {
        name
        for name, workload in _workloads().items()
        if workload["metadata"].get("labels", {}).get(STORE_LABEL) == "true"
    }
    assert labelled == set(STORE_PODS)


def test_the_base_keeps_images_in_a_bucket() -> None:
    config = _config()
    assert config["RETINAQ_STORAGE_URL"] == "s3://retinaq-images/images"
    assert "RETINAQ_STORAGE_DIR" not in config
    endpoint = config.get("AWS_ENDPOINT_URL")  # unset: AWS S3 itself
    assert endpoint is None or endpoint.startswith(("http://", "https://")), endpoint
    assert config["AWS_DEFAULT_REGION"]
    assert not [o for o in OBJECTS if o["kind"] == "PersistentVolumeClaim"]
    for name, workload in _workloads().items():
        spec = workload["spec"]["template"]["spec"]
        assert not [v for v in spec["volumes"] if "persistentVolumeClaim" in v], name
        for container in _containers(workload):
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/data/images" not in mounts, name


def test_every_pod_that_opens_the_store_has_a_writable_spool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spool = _config()["RETINAQ_SPOOL_DIR"]
    for name in STORE_PODS:
        spec = _workloads()[name]["spec"]["template"]["spec"]
        # The root filesystem is read-only: the S3 store creates its spool folder at start.
        assert {"name": "spool", "emptyDir": {}} in spec["volumes"], name
        assert {"name": "spool", "mountPath": spool} in _container(name)["volumeMounts"], name
    monkeypatch.setenv("RETINAQ_STORAGE_URL", _config()["RETINAQ_STORAGE_URL"])
    monkeypatch.setenv("RETINAQ_SPOOL_DIR", spool)
    assert Settings().upload_spool_dir == Path(spool)
    migrate = _workloads()["retinaq-migrate"]["spec"]["template"]["spec"]
    assert [v["name"] for v in migrate["volumes"]] == ["tmp"], "the migration opens no store"


def test_the_shared_volume_component_switches_the_store_to_a_folder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    objects = render(SHARED)
    [config] = [o["data"] for o in objects if o["kind"] == "ConfigMap"]
    assert config["RETINAQ_STORAGE_URL"] == "file:///data/images"
    monkeypatch.setenv("RETINAQ_STORAGE_URL", config["RETINAQ_STORAGE_URL"])
    folder = Settings().image_store
    [claim] = [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    assert claim["metadata"]["name"] == "retinaq-images"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "pods on several nodes share it"
    for name in STORE_PODS:
        spec = _spec(objects, name)
        assert {"name": "images", "persistentVolumeClaim": {"claimName": "retinaq-images"}} in (
            spec["volumes"]
        ), name
        [container] = spec["containers"]
        assert {"name": "images", "mountPath": str(folder)} in container["volumeMounts"], name
        assert spec["securityContext"]["fsGroup"] == UID, name
    # Nothing else changes: the component is the whole difference from the base.
    undone = copy.deepcopy(objects)
    undone.remove(claim)
    for obj in undone:
        if obj["kind"] == "ConfigMap":
            obj["data"]["RETINAQ_STORAGE_URL"] = _config()["RETINAQ_STORAGE_URL"]
        if (pod := _pod_spec(obj)) is not None and obj["metadata"]["name"] in STORE_PODS:
            pod["volumes"] = [v for v in pod["volumes"] if v["name"] != "images"]
            for container in pod["containers"]:
                mounts = container["volumeMounts"]
                container["volumeMounts"] = [m for m in mounts if m["name"] != "images"]
    assert undone == OBJECTS
    # And the volume is named nowhere but in the component.
    for path in yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"]:
        written = yaml.safe_dump(list(yaml.safe_load_all((BASE / path).read_text())))
        assert "retinaq-images" not in written.replace("s3://retinaq-images/", ""), path
        assert "persistentVolumeClaim" not in written, path


# Autoscaling


def test_each_worker_deployment_is_scaled_by_keda_from_zero() -> None:
    for name in WORKERS:
        scaled = _one("ScaledObject", name)["spec"]
        assert scaled["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert scaled["minReplicaCount"] == 0
        assert scaled["maxReplicaCount"] >= 1
        assert scaled["cooldownPeriod"] > 0
        assert "replicas" not in _workloads()[name]["spec"], "KEDA owns the count"


def test_the_overlay_sets_the_number_of_gpus() -> None:
    [grading] = [
        o
        for o in render(OVERLAY)
        if o["kind"] == "ScaledObject" and o["metadata"]["name"] == "retinaq-grading-worker"
    ]
    assert grading["spec"]["maxReplicaCount"] == 7
    assert grading["metadata"]["namespace"] == "retinaq"


def test_keda_watches_the_queues_the_workers_consume() -> None:
    defaults = Settings.model_fields
    assert "RETINAQ_QUEUE_NAME" not in _config() and "RETINAQ_HEATMAP_QUEUE_NAME" not in _config()
    queues = {
        "retinaq-grading-worker": defaults["queue_name"].default,
        "retinaq-heatmap-worker": defaults["heatmap_queue_name"].default,
    }
    broker_url = _one("Secret", "retinaq-secrets")["stringData"]["RETINAQ_BROKER_URL"]
    database_index = broker_url.rsplit("/", 1)[1]
    auth_secret = _one("Secret", "retinaq-keda-redis")["stringData"]
    for name, queue in queues.items():
        [trigger] = [t for t in _triggers(name) if t["type"] == "redis"]
        assert trigger["metadata"]["listName"] == queue
        assert trigger["metadata"]["databaseIndex"] == database_index
        assert trigger["metadata"]["activationListLength"] == "0", "wakes on the first task"
        auth = _one("TriggerAuthentication", trigger["authenticationRef"]["name"])
        for reference in auth["spec"]["secretTargetRef"]:
            assert reference["name"] == "retinaq-keda-redis"
            assert reference["key"] in auth_secret
        # The same server as the broker URL: host and port, as KEDA's scaler wants them.
        assert broker_url.rsplit("@", 1)[1].startswith(auth_secret["address"] + "/")


def test_grading_workers_also_scale_on_the_images_postgresql_says_are_waiting(
    submit: Callable, fundus_jpeg: Callable[..., bytes], sessions: sessionmaker[Session]
) -> None:
    """KEDA's query, run on the real schema, says what a count over the images says."""
    [trigger] = [t for t in _triggers("retinaq-grading-worker") if t["type"] == "postgresql"]
    auth = _one("TriggerAuthentication", trigger["authenticationRef"]["name"])
    [reference] = auth["spec"]["secretTargetRef"]
    assert reference["parameter"] == "connection"
    assert reference["key"] in _one("Secret", reference["name"])["stringData"]
    assert trigger["metadata"]["activationTargetQueryValue"] == "0", "wakes on the first image"
    assert int(trigger["metadata"]["targetQueryValue"]) > 0
    _, ids = submit([(fundus_jpeg(seed=i, size=64), f"{i}.jpg") for i in range(5)])
    done, _ = submit([(fundus_jpeg(seed=10, size=64), "done.jpg")])
    with sessions.begin() as session:
        session.execute(update(Image).where(Image.id == ids[0]).values(state=ImageState.GRADED))
        session.execute(update(Image).where(Image.id == ids[1]).values(state=ImageState.PROCESSING))
        session.execute(
            update(Batch)
            .where(Batch.id == uuid.UUID(done["id"]))
            .values(state=BatchState.CANCELLED)
        )
    with sessions() as session:
        waiting = session.scalar(text(trigger["metadata"]["query"]))
        counted = session.scalar(
            select(func.count())
            .select_from(Image)
            .join(Batch, Batch.id == Image.batch_id)
            .where(
                Image.state.in_(PENDING_IMAGE_STATES),
                Batch.state.not_in(FINISHED_BATCH_STATES),
            )
        )
    assert waiting == counted == 4


@pytest.fixture
def sent_to(redis_url: str, queue_name: str, tmp_path: Path) -> Iterator[redis.Redis]:
    """Four grading and two heat-map tasks sent by the API's own code to the test Redis."""
    settings = Settings(
        var_dir=tmp_path,
        broker_url=redis_url,
        queue_name=queue_name,
        heatmap_queue_name=f"{queue_name}.explain",
        task_size=2,
        grading_batch_size=3,
    )
    celery = make_celery(settings)
    ids = [uuid.uuid4() for _ in range(8)]
    send_grading(celery, settings, ids)
    send_heatmap_task(celery, settings, ids[:6])
    celery.close()
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def test_celery_keeps_each_queue_as_one_list_named_after_it(
    sent_to: redis.Redis, queue_name: str
) -> None:
    # What the ScaledObjects count: LLEN of the queue's name, with no priority lists beside.
    assert sent_to.llen(queue_name) == 4
    assert sent_to.llen(f"{queue_name}.explain") == 2
    keys = {key.decode() for key in sent_to.scan_iter(match=f"{queue_name}*")}
    assert keys == {queue_name, f"{queue_name}.explain"}


def test_webhooks_are_sent_by_a_pod_of_their_own_without_a_gpu_or_the_store() -> None:
    deployment = _one("Deployment", "retinaq-webhook-sender")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("retinaq-api"), "no model: the image without TensorFlow"
    assert container["args"] == ["retinaq", "worker", "--serve", "webhooks"]
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert "retinaq.example.org/image-store" not in deployment["metadata"]["labels"]
