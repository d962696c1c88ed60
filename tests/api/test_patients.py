"""GET /v1/batches/<id>/patients: one row per patient, graded for real by the worker."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable

from flask.testing import FlaskClient
from PIL import ImageFilter
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from common.db.tables import Image
from lab.synthetic import encode_image, generate_fundus
from worker.grading.pipeline import grade_images
from worker.runtime import WorkerRuntime


def test_patients_roll_up_per_eye_and_paginate(
    client: FlaskClient,
    auth: dict[str, str],
    make_programme: Callable[[str], dict[str, str]],
    fundus_jpeg: Callable[..., bytes],
    runtime: WorkerRuntime,
    sessions: sessionmaker[Session],
) -> None:
    names = ["a-l.jpg", "a-r.jpg", "b-l.jpg", "b-r.jpg", "c-l.jpg", "loose.jpg"]
    grades = [0, 0, 4, 4, 0, 0]
    files = [
        (io.BytesIO(fundus_jpeg(grade=g, seed=700 + i)), n)
        for i, (g, n) in enumerate(zip(grades, names, strict=True))
    ]
    # PC's only image is out of focus: the quality check makes it ungradable.
    blurred = generate_fundus(0, 704, 512).filter(ImageFilter.GaussianBlur(6))
    files[4] = (io.BytesIO(encode_image(blurred)), "c-l.jpg")
    metadata = (
        "filename,patient_id,laterality\n"
        "a-l.jpg,PA,L\na-r.jpg,PA,R\nb-l.jpg,PB,L\nb-r.jpg,PB,R\nc-l.jpg,PC,L\n"
    )
    batch = client.post(
        "/v1/batches", headers=auth, data={"images": files, "metadata": metadata}
    ).get_json()
    assert "patients" in batch["links"]

    pending = client.get(batch["links"]["patients"], headers=auth).get_json()
    assert {row["outcome"] for row in pending["items"]} == {"pending"}

    with sessions() as session:
        ids = dict(session.execute(select(Image.filename, Image.id)).all())
    report = grade_images(runtime, list(ids.values()))
    assert (report.graded, report.ungradable) == (5, 1)

    first = client.get(batch["links"]["patients"] + "?limit=2", headers=auth).get_json()
    second = client.get(first["links"]["next"], headers=auth).get_json()
    assert "next" not in second["links"]
    rows = {row["patient_id"]: row for row in first["items"] + second["items"]}
    assert list(rows) == ["PA", "PB", "PC"], "loose.jpg has no patient and is left out"

    assert rows["PA"]["outcome"] == "rescreen_12m"
    assert rows["PB"]["outcome"] == "refer"
    assert rows["PB"]["grade"] == max(rows["PB"]["eyes"][e]["grade"] for e in ("L", "R"))
    assert rows["PC"]["outcome"] == "recapture"
    assert rows["PC"]["eyes"]["L"] == {
        "grade": None,
        "referable": False,
        "gradable_images": 0,
        "images": [f"http://localhost/v1/images/{ids['c-l.jpg']}"],
    }
    assert rows["PA"]["eyes"]["L"]["images"] == [f"http://localhost/v1/images/{ids['a-l.jpg']}"]

    south = make_programme("South")
    foreign = client.get(batch["links"]["patients"], headers=south)
    assert foreign.status_code == 404
    missing = client.get(f"/v1/batches/{uuid.uuid4()}/patients", headers=south)
    assert foreign.get_json() == missing.get_json()
    bad = client.get(batch["links"]["patients"] + "?cursor=%%%", headers=auth)
    assert bad.status_code == 400
