"""``python -m cli.decode_memory``: a worker's peak memory under a batch of pixel bombs.

A pixel bomb is a small file declaring many pixels: a black 110-megapixel PNG compresses
to about 320 KB. This writes ``--bombs`` of them (each different, so none is graded once
for all) and ``--photos`` camera-sized fundus JPEGs into a scratch store, then, in a fresh
child process holding the worker's runtime and the serving model, hands them all to a
pool of ``--threads`` decoder threads through the worker's own
:func:`worker.grading.pipeline.prepare_claim`, exactly as a grading task does. It prints, as JSON,
the child's resident memory once the model is loaded, its peak while decoding (the
kernel's high-water mark, reset after start-up), the outcome of every image, and what the
pixel budget allowed. A watchdog ends the child if it passes ``--rss-limit-mib``, so a
measurement cannot take a shared machine down; the report then says so.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click
from PIL import Image

from common.settings import Settings

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_WATCH_INTERVAL_S = 0.01


def pixel_bomb(width: int, height: int, tag: str = "") -> bytes:
    """A complete, valid black RGB PNG of ``width`` x ``height``, compressed row by row.

    Never holds the picture in memory; ``tag`` (a text chunk) makes the bytes distinct.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    compressor = zlib.compressobj(9)
    row = bytes(1 + 3 * width)  # filter byte 0, then black pixels
    compressed = [compressor.compress(row) for _ in range(height)]
    compressed.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    text = chunk(b"tEXt", b"Comment\x00" + tag.encode()) if tag else b""
    body = chunk(b"IDAT", b"".join(compressed))
    return _PNG_SIGNATURE + chunk(b"IHDR", header) + text + body + chunk(b"IEND", b"")


def camera_photograph(width: int, height: int, seed: int) -> bytes:
    """A synthetic fundus filling the height of a camera's frame, as a JPEG."""
    from lab.synthetic import generate_fundus

    disc = generate_fundus(seed % 5, seed, 512).resize((height, height), Image.Resampling.BICUBIC)
    frame = Image.new("RGB", (width, height))
    frame.paste(disc, ((width - height) // 2, 0))
    buffer = io.BytesIO()
    frame.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _size(value: str) -> tuple[int, int]:
    width, _, height = value.lower().partition("x")
    return int(width), int(height)


def _proc_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark, so start-up (model loading) is not counted."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _watch(limit_kib: int, stop: threading.Event, most: list[int], code: str) -> None:
    """Sample RSS; past the limit, report and end the process at once."""
    while not stop.wait(_WATCH_INTERVAL_S):
        rss = _proc_status_kib("VmRSS")
        most[0] = max(most[0], rss)
        if rss > limit_kib:
            report = {"code": code, "aborted": True, "rss_mib_at_abort": round(rss / 1024, 1)}
            sys.stdout.write(json.dumps(report) + "\n")
            sys.stdout.flush()
            os._exit(3)


def measure(folder: Path, settings: Settings, rss_limit_mib: int) -> dict[str, Any]:
    """In this process: the worker's runtime and pool over every file in ``folder``."""
    from sqlalchemy.orm import sessionmaker

    from common.imaging.prepare import PreparedImage
    from common.lifecycle.claims import Claim
    from common.storage.files import FileStore
    from worker.grading.pipeline import prepare_claim
    from worker.ml.model import load_model
    from worker.runtime import WorkerRuntime, configure_decoding

    model = load_model(settings.model_file, settings.grading_batch_size)
    configure_decoding(settings)  # as build_runtime does
    decoder = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
    runtime = WorkerRuntime(settings, sessionmaker(), FileStore(folder), model, decoder)
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    claims = [Claim(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), name, name, 1) for name in names]
    code = str(Path(sys.modules[WorkerRuntime.__module__].__file__ or "").parent.parent)
    baseline_kib = _proc_status_kib("VmRSS")
    peak_reset = _reset_peak()
    stop, most = threading.Event(), [baseline_kib]
    watchdog = threading.Thread(
        target=_watch, args=(rss_limit_mib * 1024, stop, most, code), daemon=True
    )
    watchdog.start()
    started = time.perf_counter()
    # As a grading task does: every image handed to the pool at once.
    futures = [decoder.submit(prepare_claim, runtime, claim) for claim in claims]
    outcomes: Counter[str] = Counter()
    for future in futures:
        prepared = future.result()
        if isinstance(prepared, PreparedImage):
            outcomes["gradable" if prepared.pixels is not None else "ungradable"] += 1
        else:
            outcomes[prepared.code] += 1
    seconds = time.perf_counter() - started
    stop.set()
    watchdog.join()
    peak_kib = _proc_status_kib("VmHWM") if peak_reset else most[0]
    budget = getattr(runtime, "pixel_budget", None)  # absent before the budget existed
    return {
        "code": code,
        "images": len(claims),
        "threads": settings.decode_threads,
        "max_image_pixels": settings.max_image_pixels,
        "budget_pixels": budget.capacity if budget else None,
        "budget_peak_pixels": budget.peak if budget else None,
        "budget_waits": budget.waits if budget else None,
        "outcomes": dict(sorted(outcomes.items())),
        "seconds": round(seconds, 2),
        "rss_after_start_mib": round(baseline_kib / 1024, 1),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "peak_over_start_mib": round((peak_kib - baseline_kib) / 1024, 1),
        "peak_from": "VmHWM" if peak_reset else f"VmRSS sampled every {_WATCH_INTERVAL_S} s",
    }


@click.command()
@click.option("--threads", type=int, default=16, show_default=True, help="Decoder threads.")
@click.option("--bombs", type=int, default=16, show_default=True, help="Black PNG bombs.")
@click.option(
    "--bomb-size", default="11000x10000", show_default=True, help="WIDTHxHEIGHT of each bomb."
)
@click.option("--photos", type=int, default=4, show_default=True, help="Camera JPEGs.")
@click.option(
    "--photo-size", default="6000x4000", show_default=True, help="WIDTHxHEIGHT of each photo."
)
@click.option(
    "--max-image-pixels", type=int, default=None, help="The per-image limit (default: settings)."
)
@click.option(
    "--pixel-budget", type=int, default=None, help="decode_pixel_budget (default: settings)."
)
@click.option("--rss-limit-mib", type=int, default=8192, show_default=True)
@click.option("--measure-folder", type=click.Path(path_type=Path), hidden=True)
def main(
    threads: int,
    bombs: int,
    bomb_size: str,
    photos: int,
    photo_size: str,
    max_image_pixels: int | None,
    pixel_budget: int | None,
    rss_limit_mib: int,
    measure_folder: Path | None,
) -> None:
    """Peak worker memory decoding pixel bombs and camera photographs with N threads."""
    overrides: dict[str, Any] = {"decode_threads": threads}
    if max_image_pixels is not None:
        overrides["max_image_pixels"] = max_image_pixels
    if pixel_budget is not None:
        overrides["decode_pixel_budget"] = pixel_budget
    if measure_folder is not None:
        settings = Settings(storage_url=measure_folder.resolve().as_uri(), **overrides)
        click.echo(json.dumps(measure(measure_folder, settings, rss_limit_mib)))
        return
    with tempfile.TemporaryDirectory(prefix="retinaq-decode-memory-") as scratch:
        folder = Path(scratch)
        width, height = _size(bomb_size)
        for index in range(bombs):
            (folder / f"bomb-{index:02d}.png").write_bytes(pixel_bomb(width, height, str(index)))
        width, height = _size(photo_size)
        for index in range(photos):
            (folder / f"photo-{index:02d}.jpg").write_bytes(camera_photograph(width, height, index))
        command = [sys.executable, "-m", "cli.decode_memory", "--measure-folder", str(folder)]
        command += ["--threads", str(threads), "--rss-limit-mib", str(rss_limit_mib)]
        if max_image_pixels is not None:
            command += ["--max-image-pixels", str(max_image_pixels)]
        if pixel_budget is not None:
            command += ["--pixel-budget", str(pixel_budget)]
        child = subprocess.run(
            command,
            capture_output=True,
            text=True,
            check=False,
        )
    report = child.stdout.strip().splitlines()[-1] if child.stdout.strip() else ""
    if not report:
        raise click.ClickException(f"the measurement failed:\n{child.stderr[-2000:]}")
    figures = json.loads(report)
    figures["bomb_size"], figures["photo_size"] = bomb_size, photo_size
    click.echo(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
