"""``retinaq evaluate``: a model on a labelled set, through the serving path, measured.

Each image is decoded, quality-checked and preprocessed by the very function the worker
uses (:func:`common.imaging.prepare.prepare_image`) and graded by the worker's own
:func:`worker.ml.model.load_model`, so the figures describe what serving will do, including
how many images it would send back for recapture.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from common.imaging.decode import ImageDecodeError
from common.imaging.prepare import prepare_image
from common.modelling.manifest import ModelManifest, write_manifest
from common.screening.grades import GRADE_NAMES
from common.settings import Settings
from lab import plots
from lab.datasets import LabelledImages, stratified_split
from lab.report import choose_operating_point, evaluation_report
from worker.ml.model import LoadedModel, load_model

Progress = Callable[[str], None]
log = logging.getLogger(__name__)
BATCH_SIZE = 32
# Images decoded, prepared and graded together: bounds memory to one chunk's pixels (about
# 270 MB at 299 px) whatever the size of the set.
CHUNK_SIZE = BATCH_SIZE * 32
# A threshold is a probability: keep one chosen at the extremes strictly inside (0, 1).
THRESHOLD_LIMITS = (1e-4, 1 - 1e-4)


@dataclass(frozen=True)
class Graded:
    """Every decodable image of the set: grade, gradability, and the model's probabilities."""

    grades: np.ndarray  # (n,)
    gradable: np.ndarray  # (n,) bool
    probabilities: np.ndarray  # (n, 5); NaN rows for ungradable images
    reasons: dict[str, int]
    undecodable: int
    seconds: float


def grade_set(
    model: LoadedModel,
    labelled: LabelledImages,
    *,
    quality: bool,
    progress: Progress,
    settings: Settings | None = None,
) -> Graded:
    """Decode, check and prepare every image in threads; grade the gradable ones in batches.

    Works through the set a chunk at a time, so an EyePACS-sized set needs the memory of
    one chunk plus the probabilities, not of every image's pixels.

    The quality thresholds and pixel limit are the worker's: the manifest's, under the
    deployment's settings (``RETINAQ_*``).
    """
    settings = settings or Settings()
    manifest = model.manifest
    preprocessor = manifest.preprocessor
    thresholds = manifest.serving_quality_thresholds(settings.quality_thresholds)

    def load(index: int) -> tuple[np.ndarray | None, tuple[str, ...]] | None:
        try:
            prepared = prepare_image(
                labelled.images[index].read(),
                preprocessor,
                thresholds if quality else None,
                max_pixels=settings.max_image_pixels,
            )
        except (ImageDecodeError, OSError):
            return None
        except Exception:  # one unreadable file must not end a long run
            log.exception("%s could not be decoded", labelled.images[index].name)
            return None
        return prepared.pixels, prepared.quality.reasons

    started = time.perf_counter()
    count = len(labelled.images)
    grades, gradable, outputs, reasons, undecodable = [], [], [], {}, 0
    with ThreadPoolExecutor() as pool:
        # A chunk at a time, so memory holds one chunk of pixels, never the whole set.
        for first in range(0, count, CHUNK_SIZE):
            chunk = range(first, min(count, first + CHUNK_SIZE))
            pixels = []
            for index, loaded in zip(chunk, pool.map(load, chunk), strict=True):
                if loaded is None:
                    undecodable += 1
                    continue
                image, why = loaded
                grades.append(labelled.images[index].grade)
                gradable.append(image is not None)
                for reason in why:
                    reasons[reason] = reasons.get(reason, 0) + 1
                if image is not None:
                    pixels.append(image)
            outputs.extend(
                model.predict(preprocessor.normalise(np.stack(pixels[start : start + BATCH_SIZE])))
                for start in range(0, len(pixels), BATCH_SIZE)
            )
            if chunk.stop < count:
                progress(f"graded {chunk.stop} of {count} images")
    mask = np.asarray(gradable, dtype=bool)
    probabilities = np.full((mask.size, len(GRADE_NAMES)), np.nan)
    if outputs:
        probabilities[mask] = np.concatenate(outputs)
    seconds = time.perf_counter() - started
    progress(
        f"graded {int(mask.sum())} gradable of {mask.size} decodable images "
        f"({undecodable} undecodable) in {seconds:.1f} s"
    )
    return Graded(np.asarray(grades), mask, probabilities, reasons, undecodable, seconds)


def evaluate_model(
    model_path: Path,
    labelled: LabelledImages,
    out_dir: Path,
    *,
    target_sensitivity: float | None = None,
    validation_fraction: float = 0.5,
    quality: bool = True,
    resamples: int = 2000,
    seed: int = 0,
    progress: Progress = print,
) -> dict[str, Any]:
    """Evaluate, write ``evaluation.json``, ``roc.png`` and ``confusion.png`` into ``out_dir``.

    With ``target_sensitivity`` the referable threshold is chosen on a stratified validation
    share of the set and written into the model's manifest; the report then covers only the
    remaining images, at that threshold, so the chosen operating point is not graded on the
    images that chose it.
    """
    model = load_model(model_path, BATCH_SIZE)
    manifest = model.manifest
    graded = grade_set(model, labelled, quality=quality, progress=progress)
    rows = np.arange(graded.grades.size)
    threshold = manifest.referable_threshold
    operating_point = None
    if target_sensitivity is not None:
        rows, validation = _split(graded, validation_fraction, seed)
        usable = validation[graded.gradable[validation]]
        operating_point = choose_operating_point(
            graded.grades[usable], graded.probabilities[usable], target_sensitivity
        )
        low, high = THRESHOLD_LIMITS
        threshold = round(min(max(operating_point["threshold"], low), high), 6)
        operating_point = {**operating_point, "threshold": threshold}
        operating_point["validation_images"] = int(validation.size)
        progress(
            f"threshold {threshold:.4f} reaches sensitivity {operating_point['sensitivity']} "
            f"on {validation.size} validation images"
        )
    report = evaluation_report(
        graded.grades[rows],
        np.nan_to_num(graded.probabilities[rows]),
        referable_threshold=threshold,
        gradable=graded.gradable[rows],
        resamples=resamples,
        seed=seed,
    )
    report["model"] = {
        "name": manifest.name,
        "version": manifest.version,
        "sha256": manifest.sha256,
    }
    report["data"] = labelled.description
    report["undecodable"] = graded.undecodable
    report["ungradable_reasons"] = dict(sorted(graded.reasons.items()))
    report["images_per_s"] = round(graded.grades.size / max(graded.seconds, 1e-9), 2)
    if operating_point is not None:
        report["operating_point"] = operating_point
    report["plots"] = _write_outputs(report, out_dir)
    if operating_point is not None:
        _record_threshold(model_path, manifest, operating_point)
        progress(
            f"wrote referable_threshold {threshold:.4f} into {model_path.parent}/manifest.json"
        )
    return report


def _split(graded: Graded, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(report rows, validation rows), stratified by grade."""
    if not 0.0 < fraction < 1.0:
        raise ValueError("the validation fraction must lie strictly between 0 and 1")
    rest, validation = stratified_split(graded.grades, fraction, seed)
    return rest, validation


def _write_outputs(report: dict[str, Any], out_dir: Path) -> list[str]:
    """``evaluation.json`` and the plots; the names of the plots drawn (no ROC without both
    referable and non-referable images)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn = ["confusion.png"]
    plots.confusion_matrix_png(report["confusion_matrix"], GRADE_NAMES, out_dir / "confusion.png")
    referable = report["referable"]
    roc = referable["roc"]
    if roc is not None:
        drawn.append("roc.png")
        sensitivity = referable["sensitivity"]["value"]
        specificity = referable["specificity"]["value"]
        point = (1 - specificity, sensitivity) if None not in (sensitivity, specificity) else None
        auc = referable["auc"]["value"]
        plots.roc_curve_png(
            roc["fpr"],
            roc["tpr"],
            math.nan if auc is None else auc,
            out_dir / "roc.png",
            operating_point=point,
        )
    report = {**report, "plots": drawn}
    (out_dir / "evaluation.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    return drawn


def _record_threshold(
    model_path: Path, manifest: ModelManifest, operating_point: dict[str, Any]
) -> None:
    metrics = {**manifest.metrics, "operating_point": operating_point}
    updated = replace(manifest, referable_threshold=operating_point["threshold"], metrics=metrics)
    write_manifest(model_path, updated)
