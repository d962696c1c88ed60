"""The model manifest and the translation of probabilities into a screening decision."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.modelling.manifest import (
    ManifestError,
    ModelManifest,
    file_sha256,
    load_verified_manifest,
    read_manifest,
    write_manifest,
)
from common.screening.outcome import interpret_probabilities


def _manifest(**overrides: object) -> ModelManifest:
    fields: dict[str, object] = {
        "name": "m",
        "version": "1",
        "sha256": "0" * 64,
        "input_size": 128,
        "preprocessing": "rescale",
    }
    fields.update(overrides)
    return ModelManifest(**fields)  # type: ignore[arg-type]


def test_manifest_round_trip_and_hash_check(tmp_path: Path) -> None:
    model = tmp_path / "model.keras"
    model.write_bytes(b"weights")
    manifest = _manifest(sha256=file_sha256(model), metrics={"qwk": 0.8})
    write_manifest(model, manifest)
    assert read_manifest(model) == manifest
    assert load_verified_manifest(model) == manifest
    model.write_bytes(b"tampered")
    with pytest.raises(ManifestError, match="SHA-256"):
        load_verified_manifest(model)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"preprocessing": "magic"}, "preprocessing"),
        ({"input_size": 8}, "input_size"),
        ({"referable_threshold": 1.0}, "referable_threshold"),
        ({"class_names": ("a", "b")}, "class_names"),
    ],
)
def test_invalid_manifests_are_rejected(overrides: dict, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        _manifest(**overrides)


def test_unknown_and_missing_keys_are_named(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "m", "colour": "red"}))
    with pytest.raises(ManifestError, match="colour"):
        read_manifest(tmp_path / "model.keras")
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "m"}))
    with pytest.raises(ManifestError, match="invalid manifest"):
        read_manifest(tmp_path / "model.keras")
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(ManifestError, match="no manifest"):
        read_manifest(tmp_path / "model.keras")


@pytest.mark.parametrize(
    ("probs", "threshold", "grade", "referable", "p_ref"),
    [
        ([0.9, 0.05, 0.03, 0.01, 0.01], 0.5, 0, False, 0.05),
        ([0.1, 0.5, 0.2, 0.1, 0.1], 0.5, 1, False, 0.4),
        ([0.1, 0.5, 0.2, 0.1, 0.1], 0.3, 1, True, 0.4),  # threshold, not argmax, decides
        ([0.0, 0.0, 0.1, 0.1, 0.8], 0.5, 4, True, 1.0),
        ([2.0, 0.0, 2.0, 0.0, 0.0], 0.5, 0, True, 0.5),  # renormalised; ties pick lower grade
    ],
)
def test_probabilities_become_grade_and_referral(
    probs: list[float], threshold: float, grade: int, referable: bool, p_ref: float
) -> None:
    outcome = interpret_probabilities(np.array(probs), _manifest(referable_threshold=threshold))
    assert outcome.grade == grade
    assert outcome.grade_name == ("No DR", "Mild", "Moderate", "Severe", "Proliferative")[grade]
    assert outcome.referable is referable
    assert outcome.referable_probability == pytest.approx(p_ref)
    assert outcome.confidence == pytest.approx(max(probs) / sum(probs))
    assert sum(outcome.probabilities) == pytest.approx(1.0)


@pytest.mark.parametrize("probs", [[0.5, 0.5], [np.nan, 0, 0, 0, 1], [0, 0, 0, 0, 0]])
def test_malformed_model_output_is_refused(probs: list[float]) -> None:
    with pytest.raises(ValueError):
        interpret_probabilities(np.array(probs, dtype=float), _manifest())
