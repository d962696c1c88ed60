"""The benchmark's inputs: a scratch database, a model to serve and distinct JPEG files."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console
from sqlalchemy import create_engine, make_url, text

from common.db.schema import upgrade_to_head
from common.settings import BUNDLED_MODEL

console = Console()


@dataclass(frozen=True)
class Inputs:
    """The model and three disjoint sets of files, so no measurement reuses another's."""

    model_path: Path
    main: list[Path]  # offline, ingest and pipeline
    end_to_end: list[Path]  # also the ingest warm-up
    naive: list[Path]


@contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    """A migrated database of the benchmark's own, dropped afterwards."""
    name = f"retinaq_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade_to_head(url, quiet=True)
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def make_inputs(arch: str, count: int, naive_count: int, work: Path) -> Inputs:
    """The model for ``arch`` and ``2 * count + naive_count`` photographs under ``work``."""
    model_path = prepare_model(arch, work / "model")
    size = photograph_size(arch, model_path)
    console.print(f"writing {count} + {naive_count} images of {size} px …")
    files = write_images(work / "images", count * 2 + naive_count, size)
    return Inputs(model_path, files[:count], files[count : 2 * count], files[2 * count :])


def photograph_size(arch: str, model_path: Path) -> int:
    """Twice the model's input side (512 px for the bundled model), so resizing is work."""
    if arch == "small":
        return 512
    return 2 * int(json.loads((model_path.parent / "manifest.json").read_text())["input_size"])


def write_images(folder: Path, count: int, size: int) -> list[Path]:
    """``count`` distinct JPEG files: 64 synthetic photographs, each copy made unique by a
    trailing index after the end-of-image marker (decoders ignore it, hashes differ)."""
    from lab.synthetic import encode_image, generate_fundus

    folder.mkdir(parents=True, exist_ok=True)
    pool = [encode_image(generate_fundus(i % 5, 7000 + i, size)) for i in range(min(64, count))]
    paths = []
    for index in range(count):
        path = folder / f"bench-{index:06d}.jpg"
        path.write_bytes(pool[index % len(pool)] + index.to_bytes(8, "big"))
        paths.append(path)
    return paths


def prepare_model(arch: str, folder: Path) -> Path:
    """The bundled model, or a standard backbone with random weights and its manifest."""
    if arch == "small":
        return BUNDLED_MODEL
    from worker.ml.networks import BACKBONES, build_backbone, save_with_manifest

    if arch not in BACKBONES:
        raise click.BadParameter(f"arch must be small or one of {sorted(BACKBONES)}")
    model, size, mode = build_backbone(arch)
    save_with_manifest(
        model,
        folder,
        {
            "name": f"{arch}-random",
            "version": "bench",
            "input_size": size,
            "preprocessing": mode,
            "architecture": arch,
            "training_data": "none: random weights, for benchmarking only",
        },
    )
    return folder / "model.keras"
