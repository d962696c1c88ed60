"""``retinaq quality-eval``: how well the quality check tells gradable from ungradable.

Without ``--folder`` it generates the labelled set of :mod:`lab.quality_samples` (clean
photographs as ordinary cameras take them, and degraded ones each with the reason they
must be rejected for). With ``--folder DIR`` it reads a programme's own photographs,
labelled by folder (:mod:`lab.quality_folder`), which is how the thresholds are
calibrated for a camera. Either way every image is judged with the thresholds the workers
would use (defaults, under the serving model's manifest, under ``RETINAQ_QUALITY_THRESHOLDS``),
with ``--set NAME=VALUE`` trying others, and the command prints precision and recall of
"ungradable", per-kind and per-reason figures, the spread of each measure, and the cost.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from PIL import Image

from cli.csv_export import SpreadsheetWriter
from common.modelling.manifest import ManifestError, ModelManifest, read_manifest
from common.screening.quality import MEASURES, QualityReport, QualityThresholds
from common.settings import Settings, get_settings
from lab.quality_eval import Judged, QualitySample, evaluate_quality
from lab.quality_folder import QualityFolder, QualityFolderError
from lab.quality_samples import KINDS, iter_quality_samples

CSV_COLUMNS = ("image", "kind", "expected", "gradable", "reasons", *MEASURES)


def _parse_overrides(
    _ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]
) -> dict[str, float]:
    overrides = {}
    for value in values:
        name, sep, number = value.partition("=")
        try:
            if not sep:
                raise ValueError
            overrides[name.strip()] = float(number)
        except ValueError:
            raise click.BadParameter(f"{value!r} is not NAME=NUMBER") from None
    return overrides


@click.command("quality-eval")
@click.option(
    "--folder",
    type=click.Path(file_okay=False, path_type=Path),
    help="Your own photographs: DIR/gradable/… and DIR/ungradable/[<reason>/]…",
)
@click.option(
    "--model",
    "model",
    type=click.Path(exists=True, path_type=Path),
    help="Use this model's thresholds and decoding (a model.keras or its folder); "
    "default: the model the workers serve.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    callback=_parse_overrides,
    metavar="NAME=VALUE",
    help="Try a threshold, over the settings' (repeatable), e.g. --set min_focus=0.25.",
)
@click.option("--per-kind", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the figures to this JSON file.",
)
@click.option(
    "--csv",
    "csv_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write every image's verdict, reasons and measures to this CSV file.",
)
def quality_eval(
    folder: Path | None,
    model: Path | None,
    overrides: dict[str, float],
    per_kind: int,
    seed: int,
    json_path: Path | None,
    csv_path: Path | None,
) -> None:
    """Measure the image-quality check on a labelled set: generated, or your own (--folder)."""
    settings = get_settings()
    manifest = _serving_manifest(model, settings)
    try:
        thresholds = manifest.serving_quality_thresholds(settings.quality_thresholds)
        thresholds = thresholds.with_overrides(overrides)
    except ValueError as exc:
        raise click.ClickException(f"quality thresholds: {exc}") from exc

    source: Iterable[QualitySample]
    if folder is None:
        click.echo(f"generating {per_kind} images of each of {len(KINDS)} kinds (seed {seed}) …")
        source = iter_quality_samples(per_kind, seed)
    else:
        source = _open_folder(folder, manifest, settings)
        click.echo(f"judging {len(source)} files under {folder} …")
    started = time.perf_counter()
    with _per_image_csv(csv_path) as judged:
        figures = evaluate_quality(source, thresholds, on_judged=judged)
    figures["seconds"] = round(time.perf_counter() - started, 1)
    figures["model"] = f"{manifest.name} {manifest.version}"
    if isinstance(source, QualityFolder):
        if not figures["images"]:
            raise click.ClickException(f"none of the {len(source)} files under {folder} decoded")
        figures.update(folder=str(folder), undecodable=source.undecodable)
    else:
        figures.update(per_kind=per_kind, seed=seed)
    for line in _lines(figures, thresholds):
        click.echo(line)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(figures, indent=2) + "\n")
        click.echo(f"written to {json_path}")
    if csv_path is not None:
        click.echo(f"per-image verdicts written to {csv_path}")


def _serving_manifest(model: Path | None, settings: Settings) -> ModelManifest:
    """The manifest of ``--model``, or of the model the workers would serve."""
    path = settings.model_file if model is None else model
    if path.is_dir():
        path = path / "model.keras"
    try:
        return read_manifest(path)
    except ManifestError as exc:
        raise click.ClickException(str(exc)) from exc


def _open_folder(folder: Path, manifest: ModelManifest, settings: Settings) -> QualityFolder:
    """The folder's images, decoded as the worker decodes them for this model."""
    preprocessor = manifest.preprocessor

    def decode(data: bytes) -> Image.Image:
        return preprocessor.decode(data, max_pixels=settings.max_image_pixels)

    try:
        return QualityFolder(folder, decode)
    except QualityFolderError as exc:
        raise click.ClickException(str(exc)) from exc


@contextmanager
def _per_image_csv(path: Path | None) -> Iterator[Judged | None]:
    """A callback writing one CSV row per judged image, or None without ``--csv``."""
    if path is None:
        yield None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = SpreadsheetWriter(handle)  # file names come from the programme's folder
        writer.writerow(CSV_COLUMNS)

        def judged(sample: QualitySample, report: QualityReport) -> None:
            expected = sample.expected_reason or ("ungradable" if sample.ungradable else "")
            writer.writerow(
                [
                    sample.name or sample.kind,
                    sample.kind,
                    expected or "gradable",
                    str(report.gradable).lower(),
                    ";".join(report.reasons),
                    *(report.measures[measure] for measure in MEASURES),
                ]
            )

        yield judged


def _lines(figures: dict[str, Any], thresholds: QualityThresholds) -> list[str]:
    """The figures as a few short tables for people."""
    confusion = figures["confusion"]
    width = max(16, *(len(kind) + 2 for kind in figures["kinds"]))
    lines = [
        f"{'kind':<{width}}{'expected':<24}{'gradable':>9}{'ungradable':>11}{'as expected':>13}"
    ]
    for kind, row in figures["kinds"].items():
        lines.append(
            f"{kind:<{width}}{row['expected'] or 'gradable':<24}{row['gradable']:>9}"
            f"{row['images'] - row['gradable']:>11}{row['as_expected']:>8}/{row['images']}"
        )
    lines += [
        "",
        f"ungradable (positive class): precision {figures['precision']:.3f}, "
        f"recall {figures['recall']:.3f} "
        f"(tp {confusion['tp']}, fp {confusion['fp']}, fn {confusion['fn']}, "
        f"tn {confusion['tn']})",
    ]
    if figures["reason_recall"]:
        lines.append("recall by reason (the expected reason among those reported):")
    for reason, row in figures["reason_recall"].items():
        lines.append(f"  {reason:<24}{row['recall']:.3f} ({row['found']}/{row['expected']})")
    false_positives = figures["false_positives"]
    lines.append("false ungradable, by kind:" + ("" if false_positives else " none"))
    for kind, reasons in false_positives.items():
        lines.append(f"  {kind:<{width}}" + ", ".join(f"{r} x{n}" for r, n in reasons.items()))
    lines += _measure_lines(figures["measures"], thresholds)
    undecodable = figures.get("undecodable") or []
    if undecodable:
        shown = ", ".join(undecodable[:5]) + (", …" if len(undecodable) > 5 else "")
        lines.append(f"skipped {len(undecodable)} files that did not decode: {shown}")
    lines.append(
        f"{figures['ms_per_image']:.1f} ms per image to assess; "
        f"{figures['images']} images in {figures['seconds']:.0f} s with "
        f"{'decoding' if 'folder' in figures else 'generation'}"
    )
    return lines


def _measure_lines(
    measures: dict[str, dict[str, dict[str, float] | None]], thresholds: QualityThresholds
) -> list[str]:
    """Each measure's 5th/50th/95th percentile by label, beside the limits set on it."""
    limits = thresholds.as_dict()
    lines = ["measures, p5 / median / p95 (gradable | ungradable) and the limits on each:"]
    for measure in MEASURES:
        cells = []
        for label in ("gradable", "ungradable"):
            spread = measures[label][measure]
            cells.append(
                "-"
                if spread is None
                else f"{spread['p5']:.3g} / {spread['p50']:.3g} / {spread['p95']:.3g}"
            )
        bounds = [f"{name} {value:g}" for name, value in limits.items() if name.endswith(measure)]
        lines.append(f"  {measure:<18}{cells[0]:<26}| {cells[1]:<26}{', '.join(bounds)}")
    return lines
