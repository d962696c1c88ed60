"""``retinaq quality-eval``: how well the quality check tells gradable from ungradable.

Generates the labelled set of :mod:`common.quality_samples` (clean photographs as ordinary
cameras take them, and degraded ones each with the reason they must be rejected for), runs
:func:`common.quality.assess_quality` on every image with the default thresholds, and
prints precision and recall of "ungradable", per-kind and per-reason figures, and the cost.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from common.quality_samples import KINDS, evaluate_quality, iter_quality_samples


@click.command("quality-eval")
@click.option("--per-kind", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the figures to this JSON file.",
)
def quality_eval(per_kind: int, seed: int, json_path: Path | None) -> None:
    """Measure the image-quality check on a generated, labelled set of images."""
    click.echo(f"generating {per_kind} images of each of {len(KINDS)} kinds (seed {seed}) …")
    started = time.perf_counter()
    figures = evaluate_quality(iter_quality_samples(per_kind, seed))
    figures.update(per_kind=per_kind, seed=seed, seconds=round(time.perf_counter() - started, 1))
    for line in _lines(figures):
        click.echo(line)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(figures, indent=2) + "\n")
        click.echo(f"written to {json_path}")


def _lines(figures: dict[str, Any]) -> list[str]:
    """The figures as a few short tables for people."""
    confusion = figures["confusion"]
    lines = [f"{'kind':<16}{'expected':<24}{'gradable':>9}{'ungradable':>11}{'as expected':>13}"]
    for kind, row in figures["kinds"].items():
        lines.append(
            f"{kind:<16}{row['expected'] or 'gradable':<24}{row['gradable']:>9}"
            f"{row['images'] - row['gradable']:>11}{row['as_expected']:>8}/{row['images']}"
        )
    lines += [
        "",
        f"ungradable (positive class): precision {figures['precision']:.3f}, "
        f"recall {figures['recall']:.3f} "
        f"(tp {confusion['tp']}, fp {confusion['fp']}, fn {confusion['fn']}, "
        f"tn {confusion['tn']})",
        "recall by reason (the expected reason among those reported):",
    ]
    for reason, row in figures["reason_recall"].items():
        lines.append(f"  {reason:<24}{row['recall']:.3f} ({row['found']}/{row['expected']})")
    false_positives = figures["false_positives"]
    lines.append("false ungradable, by kind:" + ("" if false_positives else " none"))
    for kind, reasons in false_positives.items():
        lines.append(f"  {kind:<16}" + ", ".join(f"{r} x{n}" for r, n in reasons.items()))
    lines.append(
        f"{figures['ms_per_image']:.1f} ms per image to assess; "
        f"{figures['images']} images in {figures['seconds']:.0f} s with generation"
    )
    return lines
