"""Pixel bombs against a real worker runtime: refused by the limit, or decoded within the budget."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import stream_encode_multipart

from cli.decode_memory import camera_photograph, pixel_bomb
from common.db.tables import Image as ImageRow
from common.db.tables import ImageState
from common.settings import Settings
from lab.synthetic import generate_fundus
from worker.grading.pipeline import grade_images
from worker.runtime import WorkerRuntime

Outcome = tuple[str, str | None]  # state, and the error code of a failed image


@pytest.fixture
def submit_named(
    client: FlaskClient, auth: dict[str, str], sessions: sessionmaker[Session]
) -> Callable[[dict[str, bytes]], dict[str, uuid.UUID]]:
    """Upload files over HTTP; their image ids by filename."""

    def do(files: dict[str, bytes]) -> dict[str, uuid.UUID]:
        parts = MultiDict(
            ("images", FileStorage(io.BytesIO(data), filename=name, content_type="image/png"))
            for name, data in files.items()
        )
        # Encoded in memory: for a body over 500 KB the test client would spool it to a
        # temporary file that it never closes.
        body, length, boundary = stream_encode_multipart(parts, use_tempfile=False)
        response = client.post(
            "/v1/batches",
            headers=auth,
            input_stream=body,
            content_length=length,
            content_type=f"multipart/form-data; boundary={boundary}",
        )
        assert response.status_code == 202, response.get_json()
        with sessions() as session:
            rows = session.execute(select(ImageRow.filename, ImageRow.id)).all()
        return {name: image_id for name, image_id in rows if name in files}

    return do


def _outcomes(sessions: sessionmaker[Session], ids: dict[str, uuid.UUID]) -> dict[str, Outcome]:
    names = {image_id: name for name, image_id in ids.items()}
    with sessions() as session:
        rows = session.execute(
            select(ImageRow.id, ImageRow.state, ImageRow.error_code).where(
                ImageRow.id.in_(ids.values())
            )
        ).all()
    return {names[image_id]: (state.value, code) for image_id, state, code in rows}


def _large_fundus(width: int, height: int, seed: int) -> bytes:
    """A gradable fundus scaled up into a large PNG: many pixels, all of them decoded."""
    disc = generate_fundus(seed % 5, seed, 256).resize((height, height), Image.Resampling.BILINEAR)
    frame = Image.new("RGB", (width, height))
    frame.paste(disc, ((width - height) // 2, 0))
    buffer = io.BytesIO()
    frame.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def test_the_default_limit_refuses_a_110_megapixel_bomb_and_grades_a_camera_photograph(
    runtime: WorkerRuntime,
    submit_named: Callable[[dict[str, bytes]], dict[str, uuid.UUID]],
    sessions: sessionmaker[Session],
    fundus_jpeg: Callable[..., bytes],
) -> None:
    assert runtime.settings.max_image_pixels == Settings().max_image_pixels  # the default
    files = {
        "bomb.png": pixel_bomb(11_000, 10_000),  # about 320 KB
        "camera-24mp.jpg": camera_photograph(6000, 4000, seed=3),
        "small.jpg": fundus_jpeg(grade=1, seed=4),
    }
    assert len(files["bomb.png"]) < 400_000
    ids = submit_named(files)

    report = grade_images(runtime, list(ids.values()))

    assert (report.graded, report.failed) == (2, 1)
    outcomes = _outcomes(sessions, ids)
    assert outcomes["bomb.png"] == (ImageState.FAILED.value, "too_many_pixels")
    assert outcomes["camera-24mp.jpg"][0] == ImageState.GRADED.value
    assert outcomes["small.jpg"][0] == ImageState.GRADED.value
    assert runtime.pixel_budget.in_use == 0


def test_a_batch_of_pixel_bombs_never_holds_more_pixels_than_the_budget(
    settings: Settings,
    sessions: sessionmaker[Session],
    runtime: WorkerRuntime,
    submit_named: Callable[[dict[str, bytes]], dict[str, uuid.UUID]],
    fundus_jpeg: Callable[..., bytes],
) -> None:
    limit, budget = 4_000_000, 8_000_000
    small_budget = settings.model_copy(
        update={"max_image_pixels": limit, "decode_pixel_budget": budget}
    )
    # Six threads at once would hold 6 x 3.6 megapixels; the budget allows two.
    threads = ThreadPoolExecutor(6, thread_name_prefix="decode")
    worker = WorkerRuntime(small_budget, sessions, runtime.store, runtime.model, threads)
    files = {f"over-{i}.png": pixel_bomb(2500, 2000, tag=str(i)) for i in range(3)}
    files |= {f"large-{i}.png": _large_fundus(2200 + 10 * i, 1650, seed=i) for i in range(6)}
    files |= {f"normal-{i}.jpg": fundus_jpeg(grade=i % 5, seed=20 + i) for i in range(3)}
    ids = submit_named(files)

    report = grade_images(worker, list(ids.values()))
    threads.shutdown()

    outcomes = _outcomes(sessions, ids)
    for name, outcome in outcomes.items():
        if name.startswith("over-"):
            assert outcome == (ImageState.FAILED.value, "too_many_pixels"), name
        else:
            assert outcome[0] == ImageState.GRADED.value, (name, outcome)
    assert (report.graded, report.failed) == (9, 3)
    pixel_budget = worker.pixel_budget
    assert pixel_budget.capacity == budget
    assert pixel_budget.peak <= budget, "never more decoded at once than the budget"
    assert pixel_budget.peak >= 2200 * 1650, "the large images did go through the budget"
    assert pixel_budget.waits > 0, "some thread had to wait its turn"
    assert pixel_budget.in_use == 0
