"""The worker grades photographs whose field of view is not a whole circle on black."""

from __future__ import annotations

import io
import uuid

from flask.testing import FlaskClient
from PIL import ImageDraw
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.db.tables import Image, Result
from lab.quality_samples import make_sample
from worker.grading.pipeline import grade_images
from worker.runtime import WorkerRuntime


def test_a_rectangular_crop_with_a_white_bar_is_graded(
    runtime: WorkerRuntime,
    client: FlaskClient,
    auth: dict[str, str],
    sessions: sessionmaker[Session],
) -> None:
    # the retina fills a 4:3 frame, slightly defocused, with an export's white bar below
    picture = make_sample("white_bar", 0, seed=3).image.copy()
    ImageDraw.Draw(picture).rectangle(
        [0, picture.height - 40, picture.width, picture.height], fill=(250, 250, 250)
    )
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=92)
    response = client.post(
        "/v1/batches", headers=auth, data={"images": [(io.BytesIO(buffer.getvalue()), "r.jpg")]}
    )
    assert response.status_code == 202, response.get_json()
    with sessions() as session:
        batch = uuid.UUID(response.get_json()["id"])
        ids = list(session.scalars(select(Image.id).where(Image.batch_id == batch)))

    report = grade_images(runtime, ids)

    assert (report.graded, report.ungradable, report.failed) == (1, 0, 0)
    with runtime.sessions() as session:
        result = session.scalars(select(Result).where(Result.image_id == ids[0])).one()
    assert result.gradable and result.ungradable_reasons in ([], None)
    assert result.grade is not None
