"""``retinaq synth / train``: make labelled synthetic images and train a model with manifest.

``worker.training`` is imported inside ``train`` only, so ``retinaq --help`` and every other
command start without loading TensorFlow.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from common.synth import FORMATS, LABELS_NAME, write_dataset


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


@click.command("train")
@click.argument(
    "data_dir",
    required=False,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@click.option(
    "--data",
    "source",
    type=click.Choice(["synthetic", "folder"]),
    default="synthetic",
    show_default=True,
    help="Generate synthetic images, or read DATA_DIR/<grade>/<image>.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for model.keras and manifest.json.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=40, show_default=True)
@click.option("--input-size", type=click.IntRange(32, 1024), default=128, show_default=True)
@click.option(
    "--per-grade",
    type=click.IntRange(min=2),
    default=500,
    show_default=True,
    help="Synthetic images per grade.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--name", default="retinaq-small", show_default=True)
@click.option("--version", "model_version", default="1.0.0", show_default=True)
def train(
    data_dir: Path | None,
    source: str,
    out_dir: Path,
    epochs: int,
    input_size: int,
    per_grade: int,
    batch_size: int,
    seed: int,
    name: str,
    model_version: str,
) -> None:
    """Train the small grading CNN; write model.keras and its manifest."""
    if source == "folder" and data_dir is None:
        raise click.UsageError("--data folder needs DATA_DIR (holding <grade>/<image> folders)")
    if source == "synthetic" and data_dir is not None:
        raise click.UsageError("DATA_DIR is only read with --data folder")

    from worker.training import TrainConfig
    from worker.training import train as run_training

    config = TrainConfig(
        out_dir=out_dir,
        name=name,
        version=model_version,
        data_dir=data_dir,
        per_grade=per_grade,
        input_size=input_size,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
    )
    started = time.perf_counter()
    try:
        manifest = run_training(config, progress=click.echo)
    except ValueError as exc:  # no images, or too few to hold some out
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"wrote {out_dir / 'model.keras'} ({manifest.name} {manifest.version}, "
        f"sha256 {manifest.sha256[:12]}) in {time.perf_counter() - started:.0f} s"
    )
