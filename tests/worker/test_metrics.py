"""The worker's metrics server and counting rules, without a Celery worker around them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from common.imaging.decode import ImageDecodeError
from common.lifecycle.claims import Claim
from common.screening.outcome import ImageOutcome
from common.settings import get_settings
from tests.scraping import Samples, parse_exposition, sample_value, summed
from tests.support import free_port, wait_for_port
from worker.grading.recording import Recorded
from worker.heartbeat import HeartbeatStep
from worker.metrics import LIVENESS_MAX_AGE_S, REGISTRY, UNATTRIBUTED, MetricsServer
from worker.metrics import observe_recorded as observe


def _registry() -> Samples:
    from prometheus_client import generate_latest

    return parse_exposition(generate_latest(REGISTRY).decode())


def _claim(programme: uuid.UUID) -> Claim:
    return Claim(uuid.uuid4(), uuid.uuid4(), programme, uuid.uuid4().hex * 2, "none", 1)


def _outcome(*reasons: str) -> ImageOutcome:
    return ImageOutcome(False, reasons, {}, None)


@pytest.fixture
def server() -> Iterator[tuple[MetricsServer, list[float]]]:
    age = [1.0]
    served = MetricsServer("127.0.0.1", 0, lambda: age[0])
    served.start()
    yield served, age
    served.stop()


def test_healthz_answers_while_the_heartbeat_beats_and_503_once_it_stalls(
    server: tuple[MetricsServer, list[float]],
) -> None:
    served, age = server
    base = f"http://127.0.0.1:{served.port}"
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok", "heartbeat_age_s": 1.0}
    age[0] = LIVENESS_MAX_AGE_S + 1
    stalled = httpx.get(f"{base}/healthz")
    assert stalled.status_code == 503 and stalled.json()["status"] == "stalled"
    assert httpx.get(f"{base}/other").status_code == 404
    metrics = httpx.get(f"{base}/metrics")
    assert metrics.status_code == 200
    names = {name for name, _ in parse_exposition(metrics.text)}
    assert {
        "retinaq_worker_heartbeat_age_seconds",
        "retinaq_worker_micro_batch_images_count",
    } <= names


def test_outcomes_are_counted_by_programme_and_reason() -> None:
    programme = uuid.uuid4()
    label = str(programme)
    before = _registry()
    ungradable = [(_claim(programme), _outcome("not_fundus", "blurred"))]
    failures = [(_claim(programme), ImageDecodeError("corrupt_image", "damaged"))]
    observe(ungradable, failures, Recorded(0, 1, 1, []))
    after = _registry()

    def moved(name: str, **labels: str) -> float:
        return sample_value(after, name, **labels) - sample_value(before, name, **labels)

    images = "retinaq_worker_images_total"
    assert moved(images, programme_id=label, outcome="ungradable", reason="not_fundus") == 1
    assert moved(images, programme_id=label, outcome="failed", reason="corrupt_image") == 1
    reasons = "retinaq_worker_ungradable_reasons_total"
    assert moved(reasons, reason="not_fundus") == 1 and moved(reasons, reason="blurred") == 1
    assert moved("retinaq_worker_fenced_out_images_total") == 0


def test_a_write_that_lost_claims_keeps_exact_totals_under_unattributed_labels() -> None:
    programme = uuid.uuid4()
    before = _registry()
    ungradable = [(_claim(programme), _outcome("blurred")) for _ in range(3)]
    observe(ungradable, [], Recorded(0, 2, 0, []))  # one claim was superseded meanwhile
    after = _registry()
    images = "retinaq_worker_images_total"
    assert summed(after, images, programme_id=str(programme)) == summed(
        before, images, programme_id=str(programme)
    )
    unattributed = {"programme_id": UNATTRIBUTED, "outcome": "ungradable", "reason": UNATTRIBUTED}
    assert (
        sample_value(after, images, **unattributed) - sample_value(before, images, **unattributed)
        == 2
    )
    fenced = "retinaq_worker_fenced_out_images_total"
    assert sample_value(after, fenced) - sample_value(before, fenced) == 1


def test_the_worker_step_serves_metrics_only_with_a_port(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not HeartbeatStep(parent=None).include_if(None)
    port = free_port()
    monkeypatch.setenv("RETINAQ_METRICS_PORT", str(port))
    monkeypatch.setenv("RETINAQ_METRICS_HOST", "127.0.0.1")
    get_settings.cache_clear()
    try:
        step = HeartbeatStep(parent=None)
        assert step.include_if(None) and step.path is None
        step.obj = step.create(None)
        step.start(None)
        try:
            wait_for_port(port, 5, "the metrics server")
            samples = parse_exposition(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
            assert 0 <= sample_value(samples, "retinaq_worker_heartbeat_age_seconds") < 5
        finally:
            step.stop(None)
        assert step.server is None
    finally:
        get_settings.cache_clear()
