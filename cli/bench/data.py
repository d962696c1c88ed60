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
    main: list[Path]  # offline, ingest and pipeline; the fairness backlog's first 2,000
    end_to_end: list[Path]  # at most 2,000; also the ingest warm-up and the small batch
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


LATENCY_IMAGES = 2000
"""End to end and fairness measure latency and overlap, not scale: at most this many."""


def parse_rows(value: str) -> list[int]:
    """``--poll-rows``: one size or a comma-separated list, each at least 10."""
    try:
        rows = [int(item.strip().replace("_", "")) for item in value.split(",")]
    except ValueError:
        rows = []
    if not rows or min(rows) < 10:
        raise click.BadParameter(f"{value!r}: row counts of at least 10, such as 2000,100000")
    return rows


REAL_SIZES = ((2124, 2056), (3504, 2336), (4000, 3000))
"""``--sizes real``: camera photographs of 4.4, 8.2 and 12 megapixels, in turn."""
# Distinct photographs drawn per size: drawing one takes 0.1 s at 512 px but 2-3 s at
# 12 megapixels, so large ones are few and their copies made unique by a trailing index.
DISTINCT_SMALL = 64
DISTINCT_LARGE = 4
LARGE_PIXELS = 1_000_000

Size = tuple[int, int]  # width, height


def parse_sizes(value: str) -> list[Size] | None:
    """``--sizes``: None for ``model`` (a square twice the model's input), the camera mix
    for ``real``, or the listed ``WxH[,WxH…]``."""
    if value == "model":
        return None
    if value == "real":
        return list(REAL_SIZES)
    sizes = []
    for item in value.split(","):
        width, _, height = item.strip().lower().partition("x")
        if not (width.isdigit() and height.isdigit()) or min(int(width), int(height)) < 64:
            raise click.BadParameter(
                f"{item!r}: sizes are model, real or WxH[,WxH…] of at least 64 px a side"
            )
        sizes.append((int(width), int(height)))
    return sizes


def make_inputs(
    arch: str, count: int, naive_count: int, work: Path, sizes: list[Size] | None = None
) -> Inputs:
    """The model for ``arch`` and ``count + min(count, 2000) + naive_count`` photographs
    under ``work``, at ``sizes`` in turn (by default a square twice the model's input)."""
    model_path = prepare_model(arch, work / "model")
    if sizes is None:
        side = photograph_size(arch, model_path)
        sizes = [(side, side)]
    names = ", ".join(f"{width}x{height}" for width, height in sizes)
    latency = min(count, LATENCY_IMAGES)
    console.print(f"writing {count} + {latency} + {naive_count} images of {names} px …")
    files = write_images(work / "images", count + latency + naive_count, sizes)
    return Inputs(
        model_path, files[:count], files[count : count + latency], files[count + latency :]
    )


def photograph_size(arch: str, model_path: Path) -> int:
    """Twice the model's input side (512 px for the bundled model), so resizing is work."""
    if arch == "small":
        return 512
    return 2 * int(json.loads((model_path.parent / "manifest.json").read_text())["input_size"])


def write_images(folder: Path, count: int, sizes: list[Size]) -> list[Path]:
    """``count`` distinct JPEG files, one size after another: a few synthetic photographs
    per size, each copy made unique by a trailing index after the end-of-image marker
    (decoders ignore it, hashes differ)."""
    folder.mkdir(parents=True, exist_ok=True)
    pools = [
        draw_photographs(size, position, -(-count // len(sizes)))
        for position, size in enumerate(sizes)
    ]
    paths = []
    for index in range(count):
        pool = pools[index % len(sizes)]
        path = folder / f"bench-{index:06d}.jpg"
        path.write_bytes(pool[index // len(sizes) % len(pool)] + index.to_bytes(8, "big"))
        paths.append(path)
    return paths


def draw_photographs(size: Size, position: int, needed: int) -> list[bytes]:
    """Distinct JPEGs (quality 90) of one size, as a camera frames them: the round field
    of view as tall as the picture, centred, and black beside it."""
    from PIL import Image

    from lab.synthetic import encode_image, generate_fundus

    width, height = size
    distinct = DISTINCT_SMALL if width * height <= LARGE_PIXELS else DISTINCT_LARGE
    side = min(size)
    pool = []
    for i in range(min(distinct, needed)):
        seed = 7000 + 1000 * position + i
        fundus = generate_fundus(i % 5, seed, side)
        if size != (side, side):
            frame = Image.new("RGB", size)
            frame.paste(fundus, ((width - side) // 2, (height - side) // 2))
            fundus = frame
        pool.append(encode_image(fundus))
    return pool


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
