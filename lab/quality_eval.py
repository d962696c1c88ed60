"""How well the quality check tells gradable from ungradable, on any labelled set of images.

The set is either generated (:mod:`lab.quality_samples`) or a programme's own labelled
photographs (:mod:`lab.quality_folder`); both arrive as :class:`QualitySample`. Beside
precision and recall of "ungradable", the figures give the spread of every measure among
the images labelled gradable and those labelled ungradable: what a person calibrating the
thresholds for a camera needs to see where each limit should sit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from common.imaging.gradability import assess_quality
from common.screening.quality import (
    DEFAULT_THRESHOLDS,
    MEASURES,
    REASONS,
    QualityReport,
    QualityThresholds,
)

# The spread of a measure: these percentiles, named p0 (least) to p100 (most).
PERCENTILES = (0, 5, 50, 95, 100)


@dataclass(frozen=True)
class QualitySample:
    """One labelled image: its kind, and whether (and for what) it must be refused.

    ``expected_reason`` is the one reason the check should give, or None where the label
    says only "ungradable" (or the image is gradable).
    """

    kind: str
    image: Image.Image
    expected_reason: str | None = None
    ungradable: bool = False
    name: str = ""

    def __post_init__(self) -> None:
        if self.expected_reason is not None and not self.ungradable:
            raise ValueError("a sample with an expected reason is labelled ungradable")


Judged = Callable[[QualitySample, QualityReport], None]


def _ratio(part: int, whole: int) -> float:
    return round(part / whole, 4) if whole else 0.0


def _expected_label(sample: QualitySample) -> str | None:
    """What the kind must be judged: its reason, "ungradable" for no single one, None."""
    if sample.expected_reason is not None:
        return sample.expected_reason
    return "ungradable" if sample.ungradable else None


def _spread(values: list[float]) -> dict[str, float] | None:
    """The measure's percentiles among one label's images, or None when there are none."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if not finite.size:
        return None
    points = np.percentile(finite, PERCENTILES)
    return {f"p{p}": round(float(v), 4) for p, v in zip(PERCENTILES, points, strict=True)}


def evaluate_quality(
    samples: Iterable[QualitySample],
    thresholds: QualityThresholds = DEFAULT_THRESHOLDS,
    on_judged: Judged | None = None,
) -> dict[str, Any]:
    """Judge every sample; precision and recall of "ungradable", per kind and per reason.

    ``on_judged`` sees each sample with its report as it is judged (a per-image CSV);
    ``ms_per_image`` times :func:`assess_quality` alone, not making or decoding samples.
    """
    kinds: dict[str, dict[str, Any]] = {}
    by_reason = {reason: {"expected": 0, "found": 0} for reason in REASONS}
    false_positives: dict[str, dict[str, int]] = {}
    positives = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    measured: dict[str, dict[str, list[float]]] = {
        label: {measure: [] for measure in MEASURES} for label in ("gradable", "ungradable")
    }
    seconds = 0.0
    for sample in samples:
        started = time.perf_counter()
        report = assess_quality(sample.image, thresholds)
        seconds += time.perf_counter() - started
        if on_judged is not None:
            on_judged(sample, report)
        for measure, values in measured["ungradable" if sample.ungradable else "gradable"].items():
            values.append(report.measures[measure])
        row = kinds.setdefault(
            sample.kind,
            {"expected": _expected_label(sample), "images": 0, "gradable": 0, "as_expected": 0},
        )
        row["images"] += 1
        row["gradable"] += report.gradable
        if not sample.ungradable:
            row["as_expected"] += report.gradable
            positives["tn" if report.gradable else "fp"] += 1
            if not report.gradable:
                counts = false_positives.setdefault(sample.kind, {})
                for reason in report.reasons:
                    counts[reason] = counts.get(reason, 0) + 1
            continue
        positives["fn" if report.gradable else "tp"] += 1
        if sample.expected_reason is None:
            row["as_expected"] += not report.gradable
            continue
        found = sample.expected_reason in report.reasons
        row["as_expected"] += found
        by_reason[sample.expected_reason]["expected"] += 1
        by_reason[sample.expected_reason]["found"] += found
    images = sum(row["images"] for row in kinds.values())
    tp, fp, fn = positives["tp"], positives["fp"], positives["fn"]
    return {
        "images": images,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "confusion": positives,
        "kinds": kinds,
        "reason_recall": {
            reason: {**counts, "recall": _ratio(counts["found"], counts["expected"])}
            for reason, counts in by_reason.items()
            if counts["expected"]
        },
        "false_positives": false_positives,
        "measures": {
            label: {measure: _spread(values) for measure, values in by_measure.items()}
            for label, by_measure in measured.items()
        },
        "ms_per_image": round(1000 * seconds / images, 2) if images else 0.0,
        "thresholds": thresholds.as_dict(),
    }
