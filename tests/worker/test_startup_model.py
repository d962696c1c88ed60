"""A worker starts on the activated model when its host holds that file, so it loads one
model, not its settings' and then the activated one; a wrong copy falls back, loudly."""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from common.modelling.activation import activate_model
from common.settings import Settings
from worker.runtime import startup_model_file


@pytest.fixture
def registry(tmp_path: Path, registry_model: Callable[..., Path]) -> Path:
    root = tmp_path / "models"
    registry_model(root, "screening-a", version="1.0.0")
    registry_model(root, "screening-b", version="2.0.0")
    return root


def _settings(settings: Settings, registry: Path) -> Settings:
    # Through validation, as from the environment: no RETINAQ_MODEL_PATH pin.
    fields = settings.model_dump(exclude={"model_path"}, exclude_unset=True)
    return Settings.model_validate({**fields, "models_dir": registry, "model_name": "screening-a"})


def test_a_worker_starts_on_the_settings_model_until_one_is_activated(
    settings: Settings, registry: Path, sessions: sessionmaker[Session]
) -> None:
    served = _settings(settings, registry)
    assert startup_model_file(served, sessions) == registry / "screening-a" / "model.keras"

    with sessions.begin() as session:
        activate_model(session, registry, "screening-b")
    assert startup_model_file(served, sessions) == registry / "screening-b" / "model.keras"


def test_a_host_whose_copy_differs_starts_on_its_settings_model_and_says_so(
    settings: Settings,
    registry: Path,
    sessions: sessionmaker[Session],
    caplog: pytest.LogCaptureFixture,
) -> None:
    served = _settings(settings, registry)
    with sessions.begin() as session:
        activate_model(session, registry, "screening-b")
    with zipfile.ZipFile(registry / "screening-b" / "model.keras", "a") as archive:
        archive.writestr("changed-after-activation.txt", "x")  # this host's copy differs
    (registry / "screening-b" / "manifest.json").write_text("{")  # and its manifest is torn

    with caplog.at_level(logging.ERROR, logger="worker.runtime"):
        assert startup_model_file(served, sessions) == served.model_file
    assert "screening-b is activated but this host's copy" in caplog.text


def test_a_pinned_worker_starts_on_its_file_whatever_is_activated(
    settings: Settings, registry: Path, sessions: sessionmaker[Session]
) -> None:
    pinned = Settings.model_validate(
        {
            **_settings(settings, registry).model_dump(),
            "model_path": registry / "screening-a" / "model.keras",
        }
    )
    with sessions.begin() as session:
        activate_model(session, registry, "screening-b")
    assert startup_model_file(pinned, sessions) == registry / "screening-a" / "model.keras"
