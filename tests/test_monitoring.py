"""deploy/monitoring: the alert rules and the Grafana dashboard ask only for metrics and
labels the code exports (collected from real scrapes of the API and a worker's server),
Prometheus scrapes what docker-compose runs, and, where promtool is installed, the rules
pass ``promtool check rules`` and their unit tests."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from common.imaging.decode import ImageDecodeError
from common.lifecycle.claims import Claim
from tests.support import REPO_ROOT
from worker.grading.recording import Recorded
from worker.metrics import MetricsServer, StageClock, observe_recorded, record_model

MONITORING = REPO_ROOT / "deploy" / "monitoring"
RULES = MONITORING / "alerts.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "retinaq.json"
COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
# Series Prometheus makes itself, and the labels it adds to every scraped one.
PROMETHEUS_SERIES = {"up"}
PROMETHEUS_LABELS = {"job", "instance", "le"}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS |= {"and", "or", "unless", "offset", "bool"}
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "info": ("_info",),
    "gauge": ("",),
}


def _exposed(text: str, names: set[str], labels: set[str]) -> None:
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",)))
        for sample in family.samples:
            labels.update(sample.labels)


@pytest.fixture(scope="module")
def worker_server() -> Iterator[str]:
    """A worker's metrics server, after one write's worth of observations."""
    programme = uuid.uuid4()
    claim = Claim(uuid.uuid4(), uuid.uuid4(), programme, "0" * 64, "none", 1)
    observe_recorded([], [(claim, ImageDecodeError("not_an_image", "x"))], Recorded(0, 0, 1, []))
    StageClock().observe({"infer": 1.0}, 1)
    record_model("retinaq-small", "1", "0" * 64, ["CPU:0"])
    server = MetricsServer("127.0.0.1", 0, lambda: 1.0)
    server.start()
    yield f"http://127.0.0.1:{server.port}"
    server.stop()


@pytest.fixture
def exported(
    client: FlaskClient,
    worker_server: str,
    make_programme: Callable[[str], dict[str, str]],
    fundus_jpeg: Callable[..., bytes],
) -> tuple[set[str], set[str]]:
    """Every series name and label name the API and a worker export, from their scrapes."""
    auth = make_programme("Scraped")
    files = {"images": [(io.BytesIO(fundus_jpeg(seed=1)), "a.jpg")]}
    assert client.post("/v1/batches", headers=auth, data=files).status_code == 202
    assert client.get("/v1/batches").status_code == 401
    names: set[str] = set(PROMETHEUS_SERIES)
    labels: set[str] = set(PROMETHEUS_LABELS)
    _exposed(client.get("/metrics").get_data(as_text=True), names, labels)
    _exposed(httpx.get(f"{worker_server}/metrics").text, names, labels)
    return names, labels


def promql_references(expr: str) -> tuple[set[str], set[str]]:
    """The series names and label names a PromQL expression mentions."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    labels: set[str] = set()
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        labels.update(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
    for grouping in re.findall(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr
    ):
        labels.update(name.strip() for name in grouping.split(",") if name.strip())
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    tokens = re.findall(r"(?<![\w:.])[A-Za-z_:][\w:]*\b(?!\s*\()", expr)
    return {t for t in tokens if t not in _KEYWORDS}, labels


def _rules() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


def test_the_promql_reader_finds_names_and_labels() -> None:
    names, labels = promql_references(
        'sum by (le, route) (rate(a_total{status=~"5..", x="y{z}"}[5m] offset 1h)) '
        "/ on () b:c:d > 2 * vector(0) and up"
    )
    assert names == {"a_total", "b:c:d", "up"}
    assert labels == {"le", "route", "status", "x"}


def test_every_rule_asks_for_exported_metrics_and_labels(
    exported: tuple[set[str], set[str]],
) -> None:
    names, labels = exported
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    alerts = [rule for rule in _rules() if "alert" in rule]
    assert {a["alert"] for a in alerts} >= {
        "RetinaQQueueTooOld",
        "RetinaQWorkerDown",
        "RetinaQApiErrors",
        "RetinaQUngradableJump",
    }
    for rule in _rules():
        used, used_labels = promql_references(rule["expr"])
        assert used, rule
        assert used <= names | recorded, (rule.get("alert") or rule["record"], used - names)
        assert used_labels <= labels, (rule.get("alert") or rule["record"], used_labels - labels)
    for alert in alerts:
        assert alert["labels"]["severity"] in ("warning", "critical")
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]


def test_every_dashboard_query_asks_for_exported_metrics_and_labels(
    exported: tuple[set[str], set[str]],
) -> None:
    names, labels = exported
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    exprs = _dashboard_exprs()
    assert len(exprs) >= 15
    for expr in exprs:
        used, used_labels = promql_references(expr)
        assert used and used <= names | recorded, (expr, used - names - recorded)
        assert used_labels <= labels, (expr, used_labels - labels)
    dashboard = json.loads(DASHBOARD.read_text())
    source = yaml.safe_load(
        (MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    assert {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p} == {
        source["uid"]
    }
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for wanted in ("pending", "oldest", "outcome", "ungradable share", "latency", "heartbeat"):
        assert wanted in titles


def test_prometheus_scrapes_what_compose_runs() -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    (api,) = jobs["retinaq-api"]["static_configs"][0]["targets"]
    assert api == f"api:{COMPOSE['services']['api']['expose'][0]}"
    workers = set(jobs["retinaq-workers"]["static_configs"][0]["targets"])
    worker_services = {
        name
        for name, service in COMPOSE["services"].items()
        if service.get("image") == "retinaq-worker"
    }
    port = COMPOSE["x-worker"]["environment"]["RETINAQ_METRICS_PORT"]
    assert workers == {f"{name}:{port}" for name in worker_services}
    assert config["global"]["scrape_interval"] == "15s"
    prometheus = COMPOSE["services"]["prometheus"]
    mounts = {m.split(":")[0]: m.split(":")[1] for m in prometheus["volumes"] if m.startswith("./")}
    assert mounts["./deploy/monitoring/alerts.yml"] in config["rule_files"]
    for service in ("prometheus", "grafana"):
        image = COMPOSE["services"][service]["image"]
        assert re.fullmatch(r"[\w/.-]+:v?\d+\.\d+\.\d+", image), image  # pinned
        assert all(p.startswith("127.0.0.1:") for p in COMPOSE["services"][service]["ports"])


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (it ships with Prometheus, not on PyPI)")
    return found


def test_promtool_accepts_the_rules_and_their_unit_tests_pass(tmp_path: Path) -> None:
    promtool = _promtool()
    checked = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", "alerts.test.yml"],
        cwd=MONITORING,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    config = (MONITORING / "prometheus.yml").read_text()
    (tmp_path / "alerts.yml").write_text(RULES.read_text())
    local = tmp_path / "prometheus.yml"
    local.write_text(config.replace("/etc/prometheus/alerts.yml", "alerts.yml"))
    configured = subprocess.run(
        [promtool, "check", "config", str(local)], capture_output=True, text=True, timeout=60
    )
    assert configured.returncode == 0, configured.stdout + configured.stderr
