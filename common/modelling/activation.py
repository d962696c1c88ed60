"""Which registry model the workers serve: stored in the database, switched without a restart.

``retinaq admin models activate NAME`` checks the registry entry (its manifest reads, the
file's SHA-256 matches it) and stores name, version and hash in ``active_models``. Workers
read that row before each task (:mod:`worker.model_switch`) and, when it names another
model, load and warm the new one between two tasks; every result already records the model
that produced it. The API lists the same choice in ``GET /v1/models``.

Precedence, the same for every reader: a model file named outside the registry
(``RETINAQ_MODEL_PATH``) pins a worker to that file; otherwise the activated model, if any;
otherwise ``RETINAQ_MODEL_NAME``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from common.db.tables import ActiveModel, utcnow
from common.modelling.manifest import ManifestError, load_verified_manifest, read_manifest
from common.modelling.registry import MODEL_FILE, RegisteredModel, find_model
from common.settings import Settings

GRADING_ROLE = "grading"


@dataclass(frozen=True)
class Activation:
    """The model an administrator chose, as its manifest stood when it was activated."""

    name: str
    version: str
    sha256: str
    activated_at: datetime


def verified_model(models_dir: Path, name: str) -> RegisteredModel:
    """The registry entry ``name`` with its file hashed against its manifest.

    Raises :class:`ManifestError` naming what is wrong: an unknown name, a manifest that does
    not read, or a file whose SHA-256 differs from the manifest's.
    """
    model = find_model(models_dir, name)
    load_verified_manifest(model.path)
    return model


def activate_model(
    session: Session, models_dir: Path, name: str, *, role: str = GRADING_ROLE
) -> tuple[Activation | None, Activation]:
    """Make registry model ``name`` the one ``role``'s workers serve; (previous, new).

    The model is verified before anything is stored, so a worker never reads an activation
    of a file that was broken when it was made. The row is locked for the change, so two
    activations at once leave one winner, never a torn row.
    """
    model = verified_model(models_dir, name)
    row = session.get(ActiveModel, role, with_for_update=True)
    previous = None if row is None else _activation(row)
    if row is None:
        row = ActiveModel(role=role)
        session.add(row)
    row.name = model.manifest.name
    row.version = model.manifest.version
    row.sha256 = model.manifest.sha256
    row.activated_at = utcnow()
    session.flush()
    return previous, _activation(row)


def active_model(session: Session, *, role: str = GRADING_ROLE) -> Activation | None:
    """The activated model for ``role``, or None when none was ever activated (one PK read)."""
    row = session.execute(
        select(
            ActiveModel.name, ActiveModel.version, ActiveModel.sha256, ActiveModel.activated_at
        ).where(ActiveModel.role == role)
    ).one_or_none()
    return None if row is None else Activation(*row)


def pinned_model_file(settings: Settings) -> Path | None:
    """The file ``RETINAQ_MODEL_PATH`` names, which no activation overrides; None if unset."""
    return settings.model_file if "model_path" in settings.model_fields_set else None


def serving_model_file(settings: Settings, activation: Activation | None) -> Path:
    """The file workers with these settings should serve, given the current activation."""
    pinned = pinned_model_file(settings)
    if pinned is not None:
        return pinned
    if activation is not None:
        return settings.models_dir / activation.name / MODEL_FILE
    return settings.model_file


def serving_model_name(settings: Settings, activation: Activation | None) -> str:
    """The manifest name of the model workers serve (what the API reports as ``serving``)."""
    pinned = pinned_model_file(settings)
    if pinned is None and activation is not None:
        return activation.name
    try:
        return read_manifest(serving_model_file(settings, None)).name
    except ManifestError:
        return settings.model_name


def _activation(row: ActiveModel) -> Activation:
    return Activation(row.name, row.version, row.sha256, row.activated_at)
