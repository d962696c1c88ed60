"""The model registry: a folder of ``<name>/model.keras`` + ``manifest.json``.

Workers serve the model an administrator activated (:mod:`common.modelling.activation`),
else the one settings name; the API lists what is available. Adding a model is copying a
folder, and switching to it is ``retinaq admin models activate NAME``: no code change, no
restart.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from common.modelling.manifest import MANIFEST_NAME, ManifestError, ModelManifest, read_manifest

MODEL_FILE = "model.keras"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegisteredModel:
    """One model folder whose manifest reads cleanly."""

    name: str
    path: Path
    manifest: ModelManifest


def available_models(models_dir: Path) -> list[RegisteredModel]:
    """Every servable model under ``models_dir``, by name; broken folders are logged, skipped.

    The manifest is read, not the model file hashed: the worker verifies the hash when it
    loads the file, and a listing must stay cheap.
    """
    if not models_dir.is_dir():
        return []
    models = []
    for folder in sorted(models_dir.iterdir()):
        if not (folder / MANIFEST_NAME).is_file() or not NAME_PATTERN.match(folder.name):
            continue
        try:
            models.append(find_model(models_dir, folder.name))
        except ManifestError as error:
            log.warning("model folder %s is not servable: %s", folder, error)
    return models


def find_model(models_dir: Path, name: str) -> RegisteredModel:
    """The registry entry called ``name``, or :class:`ManifestError` saying what is wrong."""
    if not NAME_PATTERN.match(name):
        raise ManifestError(f"{name!r} is not a model name")
    path = models_dir / name / MODEL_FILE
    if not path.is_file():
        raise ManifestError(f"no model called {name!r} in {models_dir}")
    manifest = read_manifest(path)
    if manifest.name != name:
        raise ManifestError(f"{path.parent} holds a manifest for {manifest.name!r}, not {name!r}")
    return RegisteredModel(name, path, manifest)
