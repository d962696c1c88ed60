"""The model manifest: everything the worker must know to serve a Keras file besides the file.

A ``manifest.json`` sits next to each ``.keras`` file. It names the model, pins the file's
SHA-256 (checked at load, so a result's provenance is exact), and says how to feed it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.imaging.preprocessing_steps import (
    NORMALISATIONS,
    PREPROCESSING_VERSION,
    preprocessing_steps,
)
from common.screening.grades import GRADE_NAMES
from common.screening.quality import QualityThresholds

if TYPE_CHECKING:
    from common.imaging.preprocessing import FundusPreprocessing

MANIFEST_NAME = "manifest.json"
HEADS = ("softmax", "regression")


class ManifestError(ValueError):
    """The manifest is missing, malformed, or does not match its model file."""


@dataclass(frozen=True)
class ModelManifest:
    """What a model file needs to be served and traced."""

    name: str
    version: str
    sha256: str
    input_size: int
    preprocessing: str  # the backbone's preprocess_input mode, one of NORMALISATIONS
    class_names: tuple[str, ...] = GRADE_NAMES
    referable_threshold: float = 0.5
    preprocessing_version: str = PREPROCESSING_VERSION
    ben_graham: bool = False
    architecture: str = "small"
    head: str = "softmax"
    # Overrides of common.imaging.gradability's defaults that suit this model's training images;
    # settings override these in turn.
    quality_thresholds: dict[str, float] = field(default_factory=dict)
    training_data: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""

    def __post_init__(self) -> None:
        if self.preprocessing not in NORMALISATIONS:
            raise ManifestError(
                f"preprocessing must be one of {NORMALISATIONS}, not {self.preprocessing!r}"
            )
        if self.preprocessing_version != PREPROCESSING_VERSION:
            raise ManifestError(
                f"the model was trained with preprocessing version "
                f"{self.preprocessing_version!r}, but this code implements "
                f"{PREPROCESSING_VERSION!r}: retrain it, or serve it with a matching release"
            )
        if self.head not in HEADS:
            raise ManifestError(f"head must be one of {HEADS}, not {self.head!r}")
        try:
            QualityThresholds().with_overrides(self.quality_thresholds)
        except ValueError as error:
            raise ManifestError(f"quality_thresholds: {error}") from error
        if len(self.class_names) != len(GRADE_NAMES):
            raise ManifestError("class_names must list the five ICDR grades")
        if not 32 <= self.input_size <= 1024:
            raise ManifestError(f"input_size {self.input_size} is outside 32..1024")
        if not 0.0 < self.referable_threshold < 1.0:
            raise ManifestError("referable_threshold must lie strictly between 0 and 1")

    @property
    def preprocessor(self) -> FundusPreprocessing:
        """The preprocessing this model was trained with, ready to run."""
        # Imported here: reading and listing manifests (the API) never needs the pixels.
        from common.imaging.preprocessing import FundusPreprocessing

        return FundusPreprocessing(self.input_size, self.preprocessing, self.ben_graham)

    def serving_quality_thresholds(self, overrides: Mapping[str, float]) -> QualityThresholds:
        """The check's defaults, under this manifest's, under ``overrides`` (the settings').

        The one layering the worker, ``retinaq evaluate`` and ``retinaq quality-eval`` use.
        """
        return QualityThresholds().with_overrides(self.quality_thresholds).with_overrides(overrides)

    @property
    def preprocessing_steps(self) -> tuple[str, ...]:
        """The named steps from photograph to model input, as results record them."""
        return preprocessing_steps(self.input_size, self.preprocessing, self.ben_graham)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, plus the preprocessing steps spelled out for readers."""
        data = asdict(self)
        data["class_names"] = list(self.class_names)
        data["preprocessing_steps"] = list(self.preprocessing_steps)
        return data

    def to_json(self) -> str:
        """Stable, human-readable JSON."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelManifest:
        """Build from parsed JSON, naming the missing or unknown key on error."""
        data = dict(data)
        steps = data.pop("preprocessing_steps", None)
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ManifestError(f"unknown manifest keys: {sorted(unknown)}")
        try:
            data["class_names"] = tuple(data.get("class_names", GRADE_NAMES))
            manifest = cls(**data)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ManifestError):
                raise
            raise ManifestError(f"invalid manifest: {exc}") from exc
        if steps is not None and tuple(steps) != manifest.preprocessing_steps:
            raise ManifestError(
                f"preprocessing_steps {steps} do not match the fields, which give "
                f"{list(manifest.preprocessing_steps)}"
            )
        return manifest


def manifest_path_for(model_path: Path) -> Path:
    """The manifest lives beside the model file."""
    return model_path.with_name(MANIFEST_NAME)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(model_path: Path) -> ModelManifest:
    """Read the manifest beside ``model_path`` without touching the model file."""
    path = manifest_path_for(model_path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ManifestError(f"no manifest at {path}") from exc
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
    return ModelManifest.from_dict(data)


def load_verified_manifest(model_path: Path) -> ModelManifest:
    """Read the manifest and check the model file's SHA-256 against it."""
    manifest = read_manifest(model_path)
    if not model_path.is_file():
        raise ManifestError(f"model file {model_path} does not exist")
    actual = file_sha256(model_path)
    if actual != manifest.sha256:
        raise ManifestError(
            f"{model_path} has SHA-256 {actual}, but its manifest says {manifest.sha256}"
        )
    return manifest


def write_manifest(model_path: Path, manifest: ModelManifest) -> Path:
    """Write the manifest beside the model file; returns its path."""
    path = manifest_path_for(model_path)
    # Readers (the API, a starting worker) never see a half-written file.
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(manifest.to_json())
    os.replace(partial, path)
    return path
