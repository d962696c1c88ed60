"""Per-programme quotas: pending images and images per minute, refused with 429 before storing."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from api.quotas import pending_images
from common.db.tables import Batch, BatchState, Image, ImageState, Programme, utcnow
from common.ids import uuid7
from common.settings import Settings


def _files(fundus_jpeg: Callable[..., bytes], count: int, first_seed: int = 0) -> list:
    return [
        (io.BytesIO(fundus_jpeg(seed=first_seed + i)), f"img{first_seed + i}.jpg")
        for i in range(count)
    ]


def _image_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return session.scalar(select(func.count()).select_from(Image)) or 0


def _stored_files(store: Path) -> list[Path]:
    return [p for p in store.rglob("*") if p.is_file()]


def _set_quota(sessions: sessionmaker[Session], name: str, **limits: int | None) -> None:
    with sessions.begin() as session:
        session.execute(update(Programme).where(Programme.name == name).values(**limits))


def _backdate_images(sessions: sessionmaker[Session], seconds: float) -> None:
    with sessions.begin() as session:
        session.execute(update(Image).values(created_at=utcnow() - timedelta(seconds=seconds)))


def test_pending_quota_refuses_before_storing_anything(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    _set_quota(sessions, "North", max_pending_images=3)
    assert (
        client.post(
            "/v1/batches", headers=auth, data={"images": _files(fundus_jpeg, 2)}
        ).status_code
        == 202
    )
    stored_before = _stored_files(settings.image_store)

    refused = client.post(
        "/v1/batches", headers=auth, data={"images": _files(fundus_jpeg, 2, first_seed=10)}
    )
    assert refused.status_code == 429
    error = refused.get_json()["error"]
    assert error["code"] == "quota_exceeded"
    assert "at most 3" in error["message"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert _image_count(sessions) == 2
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Batch)) == 1
    assert _stored_files(settings.image_store) == stored_before

    exactly = client.post(
        "/v1/batches", headers=auth, data={"images": _files(fundus_jpeg, 1, first_seed=20)}
    )
    assert exactly.status_code == 202


def test_pending_quota_frees_as_images_finish(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
) -> None:
    _set_quota(sessions, "North", max_pending_images=2)
    client.post("/v1/batches", headers=auth, data={"images": _files(fundus_jpeg, 2)})
    more = {"images": _files(fundus_jpeg, 2, first_seed=5)}
    assert client.post("/v1/batches", headers=auth, data=more).status_code == 429
    with sessions.begin() as session:
        session.execute(update(Image).values(state=ImageState.GRADED))
    more = {"images": _files(fundus_jpeg, 2, first_seed=5)}
    assert client.post("/v1/batches", headers=auth, data=more).status_code == 202


def test_adding_to_an_open_batch_is_checked_too(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
) -> None:
    _set_quota(sessions, "North", max_pending_images=2)
    batch = client.post("/v1/batches", headers=auth, json={"open": True}).get_json()
    first = client.post(
        batch["links"]["add_images"], headers=auth, data={"images": _files(fundus_jpeg, 1)}
    )
    assert first.status_code == 202
    refused = client.post(
        batch["links"]["add_images"], headers=auth, data={"images": _files(fundus_jpeg, 2, 1)}
    )
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "quota_exceeded"
    status = client.get(batch["links"]["self"], headers=auth).get_json()
    assert status["image_count"] == 1
    assert status["state"] == "open"


def test_settings_give_the_default_quota(
    make_app: Callable[..., Flask],
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
) -> None:
    client = make_app(default_max_pending_images=4, default_max_images_per_minute=100).test_client()
    waiting = client.post("/v1/batches", headers=auth, data={"images": _files(fundus_jpeg, 2)})
    assert waiting.status_code == 202
    refused = client.post("/v1/batches", headers=auth, data={"images": _files(fundus_jpeg, 3, 2)})
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "quota_exceeded"
    _set_quota(sessions, "North", max_pending_images=5)
    accepted = client.post("/v1/batches", headers=auth, data={"images": _files(fundus_jpeg, 3, 2)})
    assert accepted.status_code == 202


def test_quotas_are_per_programme(
    client: FlaskClient,
    make_programme: Callable[[str], dict[str, str]],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
) -> None:
    north = make_programme("North")
    south = make_programme("South")
    _set_quota(sessions, "North", max_pending_images=2)
    _set_quota(sessions, "South", max_pending_images=2)
    assert (
        client.post(
            "/v1/batches", headers=north, data={"images": _files(fundus_jpeg, 2)}
        ).status_code
        == 202
    )
    assert (
        client.post(
            "/v1/batches", headers=south, data={"images": _files(fundus_jpeg, 2)}
        ).status_code
        == 202
    )
    assert (
        client.post(
            "/v1/batches", headers=north, data={"images": _files(fundus_jpeg, 1)}
        ).status_code
        == 429
    )


def test_rate_limit_with_retry_after_until_the_window_frees(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    settings: Settings,
) -> None:
    _set_quota(sessions, "North", max_images_per_minute=3)
    assert (
        client.post(
            "/v1/batches", headers=auth, data={"images": _files(fundus_jpeg, 3)}
        ).status_code
        == 202
    )
    stored_before = _stored_files(settings.image_store)

    refused = client.post(
        "/v1/batches", headers=auth, data={"images": _files(fundus_jpeg, 1, first_seed=9)}
    )
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "rate_limited"
    assert 58 <= int(refused.headers["Retry-After"]) <= 60
    assert _stored_files(settings.image_store) == stored_before
    assert _image_count(sessions) == 3

    _backdate_images(sessions, 45)
    later = client.post(
        "/v1/batches", headers=auth, data={"images": _files(fundus_jpeg, 1, first_seed=9)}
    )
    assert later.status_code == 429
    assert 14 <= int(later.headers["Retry-After"]) <= 16

    _backdate_images(sessions, 61)
    assert (
        client.post(
            "/v1/batches", headers=auth, data={"images": _files(fundus_jpeg, 3, first_seed=9)}
        ).status_code
        == 202
    )


def test_rate_limit_retry_after_counts_only_the_images_that_must_leave(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
) -> None:
    _set_quota(sessions, "North", max_images_per_minute=4)
    client.post("/v1/batches", headers=auth, data={"images": _files(fundus_jpeg, 2)})
    _backdate_images(sessions, 50)  # these two leave the window in about 10 s
    client.post("/v1/batches", headers=auth, data={"images": _files(fundus_jpeg, 2, 2)})
    # Four in the window; one more needs only the oldest to leave.
    refused = client.post("/v1/batches", headers=auth, data={"images": _files(fundus_jpeg, 1, 4)})
    assert refused.status_code == 429
    assert 9 <= int(refused.headers["Retry-After"]) <= 11
    # A request bigger than the whole limit can never fit: waiting would not help.
    too_big = client.post("/v1/batches", headers=auth, data={"images": _files(fundus_jpeg, 5, 4)})
    assert too_big.status_code == 422
    assert too_big.get_json()["error"]["code"] == "request_exceeds_quota"


def test_the_locked_final_check_catches_a_concurrent_submission(
    app: Flask,
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another submission commits between the unlocked pre-check and the commit."""
    _set_quota(sessions, "North", max_pending_images=3)
    with sessions.begin() as session:
        programme_id = session.scalar(select(Programme.id))
        other = Batch(programme_id=programme_id, state=BatchState.QUEUED, image_count=2)
        session.add(other)
    store = app.extensions["retinaq"].store
    real_sync = store.sync
    raced: list[bool] = []

    def sync_while_another_request_lands(spools: list[Any]) -> None:
        if not raced:
            raced.append(True)
            with sessions.begin() as session:
                for n in range(2):
                    session.add(
                        Image(
                            id=uuid7(),
                            batch_id=other.id,
                            programme_id=programme_id,
                            sha256=f"{n:064x}",
                            storage_path=f"00/00/{n:064x}",
                            size_bytes=1,
                            filename=f"concurrent{n}.jpg",
                            state=ImageState.QUEUED,
                            attempts=0,
                        )
                    )
        real_sync(spools)

    monkeypatch.setattr(store, "sync", sync_while_another_request_lands)
    refused = client.post("/v1/batches", headers=auth, data={"images": _files(fundus_jpeg, 2)})
    assert raced == [True]
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "quota_exceeded"
    with sessions() as session:
        assert session.scalars(select(Image.filename).order_by(Image.filename)).all() == [
            "concurrent0.jpg",
            "concurrent1.jpg",
        ]
        assert session.scalar(select(func.count()).select_from(Batch)) == 1
    # Refused after the pre-check: none of its bytes were put in the store.
    assert list(store.objects()) == []
    assert list(store.tmp_dir.iterdir()) == []


def test_a_request_larger_than_the_quota_itself_is_422_not_an_endless_429(
    client: FlaskClient,
    auth: dict[str, str],
    fundus_jpeg: Callable[..., bytes],
    sessions: sessionmaker[Session],
) -> None:
    _set_quota(sessions, "North", max_pending_images=2)
    files = [(io.BytesIO(fundus_jpeg(seed=i)), f"{i}.jpg") for i in range(3)]
    response = client.post("/v1/batches", headers=auth, data={"images": files})
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "request_exceeds_quota"
    assert "Retry-After" not in response.headers


def test_pending_images_are_read_from_the_batch_counters_and_agree_with_the_rows(
    submit: Callable,
    fundus_jpeg: Callable[..., bytes],
    make_programme: Callable[[str], dict[str, str]],
    sessions: sessionmaker[Session],
    client: FlaskClient,
    auth: dict[str, str],
) -> None:
    """Queued and processing count, graded, failed and cancelled do not, nor another
    programme's: the counters say what a count over the rows would, without the scan."""
    first, ids = submit([(fundus_jpeg(seed=i, size=64), f"a{i}.jpg") for i in range(6)])
    submit([(fundus_jpeg(seed=10 + i, size=64), f"b{i}.jpg") for i in range(3)])
    cancelled, _ = submit([(fundus_jpeg(seed=20 + i, size=64), f"c{i}.jpg") for i in range(2)])
    submit([(fundus_jpeg(seed=30, size=64), "other.jpg")], make_programme("Other"))
    with sessions.begin() as session:
        session.execute(update(Image).where(Image.id.in_(ids[:2])).values(state=ImageState.GRADED))
        session.execute(update(Image).where(Image.id == ids[2]).values(state=ImageState.FAILED))
        session.execute(update(Image).where(Image.id == ids[3]).values(state=ImageState.PROCESSING))
    assert client.delete(cancelled["links"]["self"], headers=auth).status_code in (200, 202)
    with sessions() as session:
        programme_id = session.scalar(
            select(Batch.programme_id).where(Batch.id == uuid.UUID(first["id"]))
        )
        counted = session.scalar(
            select(func.count())
            .select_from(Image)
            .where(
                Image.programme_id == programme_id,
                Image.state.in_([ImageState.QUEUED, ImageState.PROCESSING]),
            )
        )
        # Of the first batch two queued and one processing, and the second batch's three.
        assert pending_images(session, programme_id) == counted == 6
