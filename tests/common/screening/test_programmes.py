"""A programme's stored scheme and its patients' previous screenings, on real PostgreSQL."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy.orm import Session, sessionmaker

from common.access.apikeys import create_programme
from common.db.tables import Batch, BatchState, Image, ImageState, Programme, Result
from common.screening import programmes
from common.screening.programmes import previous_codes, programme_scheme, save_scheme
from common.screening.schemes import DEFAULT_SCHEME, NHS_DESP, build_scheme

NHS = build_scheme(NHS_DESP)


def _batch(session: Session, programme: Programme) -> Batch:
    batch = Batch(programme_id=programme.id, state=BatchState.COMPLETED, image_count=0)
    session.add(batch)
    session.flush()
    return batch


def _image(
    session: Session, batch: Batch, patient: str, grade: int | None, state: ImageState
) -> None:
    image = Image(
        batch_id=batch.id,
        programme_id=batch.programme_id,
        sha256=uuid.uuid4().hex * 2,
        storage_path="x",
        size_bytes=1,
        filename=f"{patient}.jpg",
        patient_id=patient,
        laterality="L",
        state=state,
    )
    session.add(image)
    session.flush()
    if state in (ImageState.GRADED, ImageState.UNGRADABLE):
        session.add(
            Result(
                image_id=image.id,
                batch_id=batch.id,
                gradable=grade is not None,
                ungradable_reasons=[] if grade is not None else ["blurred"],
                grade=grade,
                referable=None if grade is None else grade >= 2,
                referable_threshold=0.5,
                model_name="m",
                model_version="1",
                model_sha256="a" * 64,
                inference_ms=1.0,
            )
        )


def test_previous_codes_take_the_latest_earlier_batch_of_the_programme(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(programmes, "HISTORY_SLICE", 2)  # several slices for five patients
    with sessions.begin() as session:
        north, _ = create_programme(session, "North")
        south, _ = create_programme(session, "South")
        older, old, other = _batch(session, north), _batch(session, north), _batch(session, south)
        for patient in ("P1", "P2", "P3", "P4", "P5"):
            _image(session, older, patient, 4, ImageState.GRADED)
        _image(session, old, "P1", 0, ImageState.GRADED)
        _image(session, old, "P2", 1, ImageState.GRADED)
        _image(session, old, "P3", None, ImageState.UNGRADABLE)
        _image(session, old, "P4", None, ImageState.QUEUED)
        _image(session, other, "P5", 0, ImageState.GRADED)
        current = _batch(session, north)
        patients = ["P1", "P2", "P3", "P4", "P5", "P6"]
        codes = previous_codes(session, north.id, current.id, patients, NHS)
        assert codes == {"P1": "R0", "P2": "R1", "P3": "U", "P5": "R3A"}, (
            "P4's latest is pending, P5's latest in North is the older batch, P6 is new"
        )
        assert previous_codes(session, north.id, older.id, patients, NHS) == {}


def test_a_programme_without_a_scheme_has_icdr_and_a_saved_one_comes_back(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        programme, _ = create_programme(session, "North")
        assert programme_scheme(session, programme.id) == DEFAULT_SCHEME
        save_scheme(session, programme.id, build_scheme(NHS_DESP, {2: "R1"}, {"r0": 18}))
    with sessions.begin() as session:
        scheme = programme_scheme(session, programme.id)
        assert (scheme.name, scheme.mapping[2], scheme.recall["r0"]) == (NHS_DESP, "R1", 18)
        save_scheme(session, programme.id, build_scheme("icdr"))
    with sessions() as session:
        assert programme_scheme(session, programme.id).name == "icdr"
