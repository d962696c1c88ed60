"""``retinaq synth / train / evaluate``: labelled synthetic images, training a model with its
manifest, and measuring one through the serving path.

``worker.ml.training`` and ``worker.ml.evaluation`` are imported inside their commands only, so
``retinaq --help`` and every other command start without loading TensorFlow.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from cli.extras import require_extra
from common.modelling.manifest import HEADS
from lab.datasets import DATASETS, DatasetError, open_dataset
from lab.synthetic import FORMATS, LABELS_NAME, write_dataset

# Kept in step with worker.ml.networks.ARCHITECTURES, which cannot be imported here without
# loading TensorFlow; a test checks the two agree.
ARCHITECTURES = (
    "small",
    "mobilenetv2",
    "efficientnetb0",
    "resnet50",
    "inceptionv3",
    "xception",
    "vgg16",
)
SMALL_INPUT_SIZE = 128
PER_GRADE = 500
SYNTH_SIZE = 512  # side of each generated photograph before preparation


@click.command("synth")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--per-grade", type=click.IntRange(min=1), default=50, show_default=True)
@click.option(
    "--size",
    type=click.IntRange(64, 4096),
    default=512,
    show_default=True,
    help="Side of each image in pixels.",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--format", "fmt", type=click.Choice(sorted(FORMATS)), default="jpg", show_default=True
)
def synth(out_dir: Path, per_grade: int, size: int, seed: int, fmt: str) -> None:
    """Write labelled synthetic fundus images: OUT_DIR/<grade>/*, labels.csv."""
    started = time.perf_counter()
    written = write_dataset(out_dir, per_grade, size=size, seed=seed, fmt=fmt)
    click.echo(
        f"wrote {len(written)} images ({per_grade} per grade, {size} px, seed {seed}) to "
        f"{out_dir} with {LABELS_NAME} in {time.perf_counter() - started:.1f} s"
    )


class WeightsPath(click.ParamType):
    """``none``, or the path of an existing weights file."""

    name = "PATH|none"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> Path | None:
        if value is None or isinstance(value, Path):
            return value
        if str(value).lower() == "none":
            return None
        path = Path(str(value))
        if not path.is_file():
            self.fail(f"weights file {str(path)!r} does not exist", param, ctx)
        return path


@click.command("train")
@click.argument(
    "data_dir",
    required=False,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@click.option(
    "--data",
    "source",
    type=click.Choice(DATASETS),
    default="synthetic",
    show_default=True,
    help="Synthetic images, or DATA_DIR as APTOS 2019 (train.csv, train_images/), "
    "EyePACS (trainLabels.csv, train/) or a <grade>/<image> folder.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for model.keras, manifest.json and checkpoints/.",
)
@click.option(
    "--arch",
    type=click.Choice(ARCHITECTURES),
    default="small",
    show_default=True,
    help="Our small CNN, or a Keras backbone at its standard input size.",
)
@click.option(
    "--head",
    type=click.Choice(HEADS),
    default="softmax",
    show_default=True,
    help="Softmax over the grades, or one regression score with learned grade thresholds.",
)
@click.option(
    "--weights",
    type=WeightsPath(),
    default=None,
    metavar="PATH|none",
    help="Backbone weights without top (.h5 / .weights.h5), or none.  [default: none]",
)
@click.option(
    "--ben-graham/--no-ben-graham",
    default=False,
    show_default=True,
    help="Ben Graham local-colour normalisation, in training and in serving alike.",
)
@click.option(
    "--balance",
    type=click.Choice(["weights", "sampling"]),
    default="weights",
    show_default=True,
    help="Class-weighted loss, or batches drawing every grade equally often.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=40, show_default=True)
@click.option(
    "--input-size",
    type=click.IntRange(32, 1024),
    default=None,
    help=f"Side of the small CNN's input.  [default: {SMALL_INPUT_SIZE}]",
)
@click.option(
    "--per-grade",
    type=click.IntRange(min=2),
    default=None,
    help=f"Synthetic images per grade.  [default: {PER_GRADE}]",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--learning-rate",
    type=click.FloatRange(min=0.0, min_open=True),
    default=None,
    help="Adam's rate.  [default: 2e-3 for small, 1e-4 for a backbone]",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Threads decoding images and augmenting batches.  [default: by CPU count]",
)
@click.option("--name", default=None, help="Model name.  [default: retinaq-<arch>[-regression]]")
@click.option("--version", "model_version", default="1.0.0", show_default=True)
def train(
    data_dir: Path | None,
    source: str,
    out_dir: Path,
    arch: str,
    head: str,
    weights: Path | None,
    ben_graham: bool,
    balance: str,
    epochs: int,
    input_size: int | None,
    per_grade: int | None,
    batch_size: int,
    learning_rate: float | None,
    seed: int,
    workers: int | None,
    name: str | None,
    model_version: str,
) -> None:
    """Train a grading model; write model.keras, its manifest and checkpoints."""
    require_extra("lab")
    if source != "synthetic" and data_dir is None:
        raise click.UsageError(f"--data {source} needs DATA_DIR")
    if source == "synthetic" and data_dir is not None:
        raise click.UsageError("DATA_DIR is read with --data aptos, eyepacs or folder")
    if per_grade is not None and source != "synthetic":
        raise click.UsageError("--per-grade sets the number of synthetic images")
    if input_size is not None and arch != "small":
        raise click.UsageError(
            f"--arch {arch} takes its standard input size; --input-size is small's"
        )
    if weights is not None and arch == "small":
        raise click.UsageError("--weights loads into a backbone; the small CNN starts from random")
    try:  # before TensorFlow loads, so a broken layout fails at once
        images = open_dataset(
            source, data_dir, per_grade=per_grade or PER_GRADE, size=SYNTH_SIZE, seed=seed
        )
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(images.description)

    from worker.ml.networks import WeightsError
    from worker.ml.training import TrainConfig, TrainingError
    from worker.ml.training import train as run_training

    suffix = "-regression" if head == "regression" else ""
    config = TrainConfig(
        out_dir=out_dir,
        name=name or f"retinaq-{arch}{suffix}",
        version=model_version,
        arch=arch,
        head=head,
        weights=weights,
        ben_graham=ben_graham,
        balance=balance,
        input_size=input_size or SMALL_INPUT_SIZE,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        workers=workers,
    )
    started = time.perf_counter()
    try:
        manifest = run_training(config, images, progress=click.echo)
    except (DatasetError, TrainingError, WeightsError) as exc:  # nothing decodable, too few
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"wrote {out_dir / 'model.keras'} ({manifest.name} {manifest.version}, "
        f"{manifest.architecture} {manifest.head} head, {manifest.input_size} px "
        f"{manifest.preprocessing}, sha256 {manifest.sha256[:12]}) "
        f"in {time.perf_counter() - started:.0f} s"
    )


@click.command("evaluate")
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.argument(
    "data_dir", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--data",
    "source",
    type=click.Choice(DATASETS),
    default=None,
    help="How DATA_DIR is laid out (as for train).  [default: folder with DATA_DIR, "
    "else synthetic]",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("evaluation"),
    show_default=True,
    help="Folder for evaluation.json, roc.png and confusion.png.",
)
@click.option(
    "--target-sensitivity",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=None,
    help="Choose the referable threshold reaching this sensitivity on a validation share "
    "of DATA and write it into the model's manifest.",
)
@click.option(
    "--validation-fraction",
    type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True),
    default=0.5,
    show_default=True,
    help="Share of DATA that chooses the threshold; the report covers the rest.",
)
@click.option(
    "--quality/--no-quality",
    default=True,
    show_default=True,
    help="Run the gradability check first, as serving does.",
)
@click.option("--per-grade", type=click.IntRange(min=2), default=100, show_default=True)
@click.option("--resamples", type=click.IntRange(min=100), default=2000, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=1, show_default=True)
def evaluate(
    model: Path,
    data_dir: Path | None,
    source: str | None,
    out_dir: Path,
    target_sensitivity: float | None,
    validation_fraction: float,
    quality: bool,
    per_grade: int,
    resamples: int,
    seed: int,
) -> None:
    """Measure MODEL (a model.keras or its folder) on a labelled set: JSON and PNG plots."""
    require_extra("lab")
    model_path = model / "model.keras" if model.is_dir() else model
    source = source or ("folder" if data_dir is not None else "synthetic")
    if source == "synthetic" and data_dir is not None:
        raise click.UsageError("DATA_DIR is read with --data aptos, eyepacs or folder")
    try:
        images = open_dataset(source, data_dir, per_grade=per_grade, size=SYNTH_SIZE, seed=seed)
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(images.description)

    from common.modelling.manifest import ManifestError
    from worker.ml.evaluation import evaluate_model

    try:
        report = evaluate_model(
            model_path,
            images,
            out_dir,
            target_sensitivity=target_sensitivity,
            validation_fraction=validation_fraction,
            quality=quality,
            resamples=resamples,
            seed=seed,
            progress=click.echo,
        )
    except (ManifestError, ValueError) as exc:  # no positives to choose on, a bad model
        raise click.ClickException(str(exc)) from exc
    referable = report["referable"]

    def estimate(entry: dict) -> str:
        if entry["value"] is None:
            return "n/a"
        return f"{entry['value']:.3f} ({entry['low']:.3f}-{entry['high']:.3f})"

    click.echo(
        f"{report['gradable']} gradable of {report['images']} "
        f"(ungradable rate {report['ungradable_rate']}); "
        f"QWK {estimate(report['quadratic_weighted_kappa'])}\n"
        f"referable at threshold {referable['threshold']}: "
        f"sensitivity {estimate(referable['sensitivity'])}, "
        f"specificity {estimate(referable['specificity'])}, AUC {estimate(referable['auc'])}\n"
        f"wrote {out_dir / 'evaluation.json'}, {', '.join(report['plots'])}"
    )
