"""What a result carries, ungradable images, heat maps and the batch's model, over HTTP.

Images are graded for real by the worker's code in-process; heat-map tasks go through the
real Redis queue of their own and are then run in-process.
"""

from __future__ import annotations

import base64
import io
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from PIL import Image as PILImage
from PIL import ImageEnhance, ImageFilter
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.db.tables import Image
from common.imaging.preprocessing_steps import PREPROCESSING_VERSION
from common.queue import HEATMAP_TASK
from common.settings import Settings
from lab.synthetic import encode_image, generate_fundus
from worker.grading.heatmaps import make_heatmaps
from worker.grading.pipeline import grade_images
from worker.runtime import WorkerRuntime


def _upload(
    client: FlaskClient, auth: dict[str, str], files: dict[str, bytes], **form: str
) -> dict[str, Any]:
    parts = [(io.BytesIO(data), name) for name, data in files.items()]
    response = client.post("/v1/batches", headers=auth, data={"images": parts, **form})
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def _ids(sessions: sessionmaker[Session], batch: dict[str, Any]) -> dict[str, uuid.UUID]:
    with sessions() as session:
        rows = session.execute(
            select(Image.filename, Image.id).where(Image.batch_id == uuid.UUID(batch["id"]))
        ).all()
    return dict(rows)


def _explain_queue(redis_client: redis.Redis, settings: Settings) -> list[list[str]]:
    tasks = []
    for raw in redis_client.lrange(settings.heatmap_queue_name, 0, -1):
        message = json.loads(raw)
        assert message["headers"]["task"] == HEATMAP_TASK
        tasks.append(json.loads(base64.b64decode(message["body"]))[0][0])
    return tasks


@pytest.fixture
def photographs() -> dict[str, bytes]:
    """A healthy eye, a proliferative one, and three that must be recaptured."""
    healthy = generate_fundus(0, 51, 512)
    return {
        "healthy.jpg": encode_image(healthy),
        "proliferative.jpg": encode_image(generate_fundus(4, 52, 512)),
        "blurred.jpg": encode_image(healthy.filter(ImageFilter.GaussianBlur(6))),
        "dark.jpg": encode_image(ImageEnhance.Brightness(healthy).enhance(0.12)),
        "document.png": encode_image(PILImage.new("RGB", (600, 400), (245, 245, 240)), "png"),
    }


def test_results_carry_the_clinical_fields_and_ungradable_reasons(
    client: FlaskClient,
    auth: dict[str, str],
    photographs: dict[str, bytes],
    runtime: WorkerRuntime,
    sessions: sessionmaker[Session],
) -> None:
    batch = _upload(client, auth, photographs)
    assert (batch["explain"], batch["model"]) == (False, None)
    ids = _ids(sessions, batch)
    report = grade_images(runtime, list(ids.values()))
    assert (report.graded, report.ungradable, report.failed) == (2, 3, 0)

    manifest = runtime.model.manifest
    rows = {
        r["filename"]: r for r in client.get(batch["links"]["results"], headers=auth).json["items"]
    }
    for name in ("blurred.jpg", "dark.jpg", "document.png"):
        assert rows[name]["state"] == "ungradable"
        assert rows[name]["gradable"] is False
        assert rows[name]["grade"] is None and rows[name]["referable"] is None
    assert rows["blurred.jpg"]["ungradable_reasons"] == ["blurred"]
    assert rows["dark.jpg"]["ungradable_reasons"] == ["underexposed"]
    assert "not_fundus" in rows["document.png"]["ungradable_reasons"]

    detail = client.get(rows["blurred.jpg"]["links"]["image"], headers=auth).get_json()
    result = detail["result"]
    assert result["message"].startswith("recapture: ")
    assert "focus" in result["message"]
    assert result["quality"]["focus"] < 1.0
    assert result["model"]["sha256"] == manifest.sha256

    graded = client.get(rows["proliferative.jpg"]["links"]["image"], headers=auth).json["result"]
    probabilities = graded["probabilities"]
    assert graded["gradable"] is True and graded["ungradable_reasons"] == []
    assert graded["message"] is None
    assert graded["grade"] == 4 and graded["referable"] is True
    assert graded["expected_grade"] == pytest.approx(
        sum(g * p for g, p in enumerate(probabilities)), abs=1e-4
    )
    assert graded["referable_threshold"] == manifest.referable_threshold
    assert graded["confidence"] == max(probabilities)
    assert graded["preprocessing_version"] == PREPROCESSING_VERSION
    assert graded["model"] == {
        "name": manifest.name,
        "version": manifest.version,
        "sha256": manifest.sha256,
    }

    status = client.get(batch["links"]["self"], headers=auth).get_json()
    # the batch records the model that graded it, and that no other model took part
    assert status["model"] == {**graded["model"], "mixed": False}
    assert status["counts"]["ungradable"] == 3 and status["counts"]["graded"] == 2
    assert status["state"] == "completed"


def test_heat_maps_for_referable_results_on_their_own_queue(
    client: FlaskClient,
    auth: dict[str, str],
    make_programme: Callable[[str], dict[str, str]],
    photographs: dict[str, bytes],
    runtime: WorkerRuntime,
    sessions: sessionmaker[Session],
    redis_client: redis.Redis,
    settings: Settings,
    queued_tasks: Callable[[], list[list[str]]],
) -> None:
    batch = _upload(client, auth, photographs)
    ids = _ids(sessions, batch)
    queued_tasks()  # the grading tasks the upload sent
    grade_images(runtime, list(ids.values()))
    wanted = [item for task in _explain_queue(redis_client, settings) for item in task]
    assert wanted == [str(ids["proliferative.jpg"])], "only the referable result, not the rest"

    healthy = f"/v1/images/{ids['healthy.jpg']}/heatmap"
    missing = client.get(healthy, headers=auth)
    assert missing.status_code == 404
    assert missing.get_json()["error"]["code"] == "no_heatmap"
    ungradable = client.get(f"/v1/images/{ids['blurred.jpg']}/heatmap", headers=auth)
    assert "ungradable" in ungradable.get_json()["error"]["message"]

    assert make_heatmaps(runtime, [uuid.UUID(i) for i in wanted]) == 1
    assert make_heatmaps(runtime, [uuid.UUID(i) for i in wanted]) == 0, "made once"
    detail = client.get(f"/v1/images/{ids['proliferative.jpg']}", headers=auth).get_json()
    heatmap_url = detail["result"]["heatmap"]
    assert heatmap_url == f"http://localhost/v1/images/{ids['proliferative.jpg']}/heatmap"
    response = client.get(heatmap_url, headers=auth)
    png = response.get_data()
    response.close()  # send_file streams from the store
    assert response.status_code == 200 and response.mimetype == "image/png"
    size = runtime.model.manifest.input_size
    assert PILImage.open(io.BytesIO(png)).size == (size, size)
    etag = {"If-None-Match": response.headers["ETag"]}
    cached = client.get(heatmap_url, headers={**auth, **etag})
    cached.close()
    assert cached.status_code == 304

    south = make_programme("South")
    foreign = client.get(heatmap_url, headers=south)
    assert foreign.status_code == 404 and foreign.get_json()["error"]["code"] == "not_found"


def test_a_batch_that_asks_for_explanations_gets_them_for_every_gradable_image(
    client: FlaskClient,
    auth: dict[str, str],
    photographs: dict[str, bytes],
    runtime: WorkerRuntime,
    sessions: sessionmaker[Session],
    redis_client: redis.Redis,
    settings: Settings,
) -> None:
    batch = _upload(client, auth, photographs, explain="true")
    assert batch["explain"] is True
    ids = _ids(sessions, batch)
    grade_images(runtime, list(ids.values()))
    wanted = sorted(item for task in _explain_queue(redis_client, settings) for item in task)
    assert wanted == sorted(str(ids[n]) for n in ("healthy.jpg", "proliferative.jpg"))
    assert make_heatmaps(runtime, [uuid.UUID(i) for i in wanted]) == 2
    rows = client.get(batch["links"]["results"], headers=auth).json["items"]
    with_maps = {r["filename"] for r in rows if r["links"]["heatmap"]}
    assert with_maps == {"healthy.jpg", "proliferative.jpg"}


def test_heat_maps_can_be_switched_off(
    make_app: Callable[..., Any],
    auth: dict[str, str],
    photographs: dict[str, bytes],
    runtime: WorkerRuntime,
    sessions: sessionmaker[Session],
    redis_client: redis.Redis,
    settings: Settings,
) -> None:
    client = make_app().test_client()
    batch = _upload(client, auth, photographs, explain="true")
    quiet = WorkerRuntime(
        settings.model_copy(update={"heatmaps": False}), sessions, runtime.store, runtime.model
    )
    grade_images(quiet, list(_ids(sessions, batch).values()))
    assert _explain_queue(redis_client, settings) == []


@pytest.mark.parametrize(
    ("form", "code"),
    [({"explain": "perhaps"}, "invalid_explain")],
)
def test_a_bad_explain_flag_is_refused(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    form: dict,
    code: str,
) -> None:
    response = client.post(
        "/v1/batches",
        headers=auth,
        data={"images": [(io.BytesIO(fundus_jpeg()), "a.jpg")], **form},
    )
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == code
    opened = client.post("/v1/batches", headers=auth, json={"open": True, "explain": 3})
    assert opened.status_code == 422
    assert opened.get_json()["error"]["code"] == "invalid_explain"
    fine = client.post("/v1/batches", headers=auth, json={"open": True, "explain": True})
    assert fine.status_code == 201 and fine.get_json()["explain"] is True
