"""Labelled fundus image sets for training: listing, preparing, splitting and augmenting.

A set is a list of lazily readable images with their ICDR grade: synthetic (``lab.synthetic``),
APTOS 2019 (``train.csv`` + ``train_images/``), EyePACS / Kaggle 2015 (``trainLabels.csv`` +
``train/``), or a ``<grade>/<image>`` folder. Nothing is decoded while a set is listed, so a
35k-image set opens in a second and a broken layout fails before any work is done. Each
image is then prepared once, by the serving preprocessing, at the model's input size; the
trainer augments those uint8 pixels batch by batch. NumPy and Pillow only.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from common.imaging.decode import FIELD_OF_VIEW_THRESHOLD, ImageDecodeError
from common.imaging.preprocessing import FundusPreprocessing
from common.screening.grades import GRADES, N_GRADES
from lab.synthetic import encode_image, generate_fundus, image_seed

DATASETS = ("synthetic", "aptos", "eyepacs", "folder")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})
# Above this many bytes of prepared pixels, prepare_images writes them to a memory-mapped
# file instead of RAM: EyePACS at 299 px is 35k x 268 kB, about 9.4 GB.
IN_MEMORY_LIMIT = 4 * 1024**3
BRIGHTNESS = (0.8, 1.2)  # gains drawn per training image
CONTRAST = (0.8, 1.2)
_PROGRESS_EVERY_S = 10.0
_CHUNK = 256  # images handed to the thread pool at a time, so progress can be reported


class DatasetError(ValueError):
    """A dataset that cannot be read as given: the message names the file and the problem."""


@dataclass(frozen=True)
class FileImage:
    """An image file on disk and its grade."""

    path: Path
    grade: int

    @property
    def name(self) -> str:
        """How reports name the image."""
        return str(self.path)

    def read(self) -> bytes:
        """The file's bytes."""
        return self.path.read_bytes()


@dataclass(frozen=True)
class SyntheticImage:
    """A ``lab.synthetic`` photograph, generated and JPEG-encoded when read."""

    name: str
    grade: int
    seed: int
    size: int

    def read(self) -> bytes:
        """The photograph as JPEG bytes, the same every time."""
        return encode_image(generate_fundus(self.grade, self.seed, self.size), "jpg")


LabelledImage = FileImage | SyntheticImage


def _describe(origin: str, grades: Sequence[int], missing: int, undecodable: int) -> str:
    """``origin: n images, per grade [...]`` plus what was skipped."""
    counts = np.bincount(np.asarray(grades, dtype=np.int64), minlength=N_GRADES).tolist()
    text = f"{origin}: {len(grades)} images, per grade {counts}"
    if missing:
        text += f", {missing} missing skipped"
    if undecodable:
        text += f", {undecodable} undecodable skipped"
    return text


@dataclass(frozen=True)
class LabelledImages:
    """The images of one set, where they came from, and the listed ones that were not found."""

    images: tuple[LabelledImage, ...]
    origin: str
    missing: tuple[str, ...] = ()

    @property
    def grades(self) -> np.ndarray:
        """The grade of each image, in order."""
        return np.asarray([image.grade for image in self.images], dtype=np.int64)

    @property
    def description(self) -> str:
        """One line for the manifest's ``training_data``."""
        return _describe(self.origin, self.grades.tolist(), len(self.missing), 0)


def synthetic_images(per_grade: int, *, size: int = 512, seed: int = 0) -> LabelledImages:
    """``per_grade`` synthetic photographs of each grade, as ``lab.synthetic.iter_dataset``."""
    if per_grade < 1:
        raise DatasetError("per_grade must be positive")
    images = tuple(
        SyntheticImage(f"g{grade}-{index:05d}", grade, image_seed(seed, grade, index), size)
        for grade in GRADES
        for index in range(per_grade)
    )
    origin = (
        f"synthetic (lab.synthetic seed {seed}, {per_grade} JPEG images per grade at {size} px)"
    )
    return LabelledImages(images, origin)


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise DatasetError(f"{path} is not a folder: {what}")


def folder_images(root: Path) -> LabelledImages:
    """Every image under ``root/0/`` … ``root/4/``, in a stable order."""
    _require_dir(root, "--data folder reads <DIR>/<grade>/<image>")
    images = []
    for grade in GRADES:
        folder = root / str(grade)
        if folder.is_dir():
            images.extend(
                FileImage(path, grade)
                for path in sorted(folder.iterdir())
                if path.suffix.lower() in IMAGE_SUFFIXES
            )
    if not images:
        raise DatasetError(f"no images found under {root}/<grade>/ (grades 0-4)")
    return LabelledImages(tuple(images), f"folder {root.name}")


def _index_images(folders: Iterable[Path]) -> dict[str, Path]:
    """Image files by full name and by stem; the first folder listed wins a clash."""
    found: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        # one directory listing, not one stat per CSV row: EyePACS lists 35k images
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            path = Path(entry.path)
            if path.suffix.lower() in IMAGE_SUFFIXES and entry.is_file():
                found.setdefault(path.name, path)
                found.setdefault(path.stem, path)
    return found


def _read_labels(csv_path: Path, id_column: str, grade_column: str) -> list[tuple[str, int]]:
    """``(image id, grade)`` per row of a labels CSV, checked column by column."""
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path} does not exist")
    rows = []
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [name.strip() for name in reader.fieldnames or []]
        if id_column not in columns or grade_column not in columns:
            raise DatasetError(
                f"{csv_path} has columns {columns}; expected {id_column!r} and {grade_column!r}"
            )
        reader.fieldnames = columns
        for line, row in enumerate(reader, start=2):
            image_id = (row[id_column] or "").strip()
            value = (row[grade_column] or "").strip()
            if not image_id:
                raise DatasetError(f"{csv_path} line {line}: empty {id_column!r}")
            try:
                grade = int(value)
            except ValueError:
                grade = -1
            if grade not in GRADES:
                raise DatasetError(
                    f"{csv_path} line {line}: {grade_column} {value!r} is not a grade 0-4"
                )
            rows.append((image_id, grade))
    if not rows:
        raise DatasetError(f"{csv_path} lists no images")
    return rows


def _labelled_files(
    origin: str, csv_path: Path, rows: list[tuple[str, int]], folders: Sequence[Path]
) -> LabelledImages:
    """Match each CSV row to its file; rows without one are kept aside as missing."""
    found = _index_images(folders)
    images, missing = [], []
    for image_id, grade in rows:
        path = found.get(image_id)
        if path is None:
            missing.append(image_id)
        else:
            images.append(FileImage(path, grade))
    if not images:
        where = " or ".join(str(folder) for folder in folders)
        raise DatasetError(
            f"none of the {len(rows)} images listed in {csv_path} was found in {where}"
        )
    return LabelledImages(tuple(images), origin, tuple(missing))


def aptos_images(root: Path) -> LabelledImages:
    """APTOS 2019: ``root/train.csv`` (``id_code,diagnosis``) and ``root/train_images/<id>.png``."""
    _require_dir(root, "--data aptos reads <DIR>/train.csv and <DIR>/train_images/")
    csv_path = root / "train.csv"
    rows = _read_labels(csv_path, "id_code", "diagnosis")
    _require_dir(root / "train_images", f"APTOS images belong in {root}/train_images/")
    return _labelled_files(f"aptos {root.name}", csv_path, rows, [root / "train_images"])


def eyepacs_images(root: Path) -> LabelledImages:
    """EyePACS (Kaggle 2015): ``root/trainLabels.csv`` (``image,level``), ``root/train/*.jpeg``.

    The images may also lie directly in ``root``.
    """
    _require_dir(root, "--data eyepacs reads <DIR>/trainLabels.csv and <DIR>/train/")
    csv_path = root / "trainLabels.csv"
    rows = _read_labels(csv_path, "image", "level")
    return _labelled_files(f"eyepacs {root.name}", csv_path, rows, [root / "train", root])


def open_dataset(
    kind: str, root: Path | None, *, per_grade: int = 500, size: int = 512, seed: int = 0
) -> LabelledImages:
    """The set ``retinaq train --data`` names; ``per_grade``, ``size``, ``seed``: synthetic's."""
    if kind == "synthetic":
        return synthetic_images(per_grade, size=size, seed=seed)
    if kind not in DATASETS:
        raise DatasetError(f"dataset must be one of {DATASETS}, not {kind!r}")
    if root is None:
        raise DatasetError(f"--data {kind} needs the dataset's folder")
    readers: dict[str, Callable[[Path], LabelledImages]] = {
        "aptos": aptos_images,
        "eyepacs": eyepacs_images,
        "folder": folder_images,
    }
    return readers[kind](root)


@dataclass(frozen=True)
class PreparedImages:
    """The images as the model's uint8 inputs (in RAM or memory-mapped) and their grades."""

    pixels: np.ndarray  # N x S x S x 3 uint8, FundusPreprocessing.prepare's output
    grades: np.ndarray  # N, int64
    undecodable: tuple[str, ...]
    description: str


def _pixel_store(shape: tuple[int, ...], cache_path: Path | None, limit: int) -> np.ndarray:
    """An empty uint8 array: in RAM when small enough, else an ``.npy`` memory-mapped file."""
    if cache_path is None or int(np.prod(shape)) <= limit:
        return np.empty(shape, dtype=np.uint8)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    return np.lib.format.open_memmap(cache_path, mode="w+", dtype=np.uint8, shape=shape)


def prepare_images(
    labelled: LabelledImages,
    preprocessor: FundusPreprocessing,
    *,
    max_pixels: int,
    workers: int | None = None,
    cache_path: Path | None = None,
    in_memory_limit: int = IN_MEMORY_LIMIT,
    progress: Callable[[str], None] = print,
) -> PreparedImages:
    """Decode and prepare every image once, in a thread pool; undecodable ones are skipped.

    Pillow releases the GIL while it decodes, resizes and filters, so threads scale. Pixels
    go straight into one preallocated array (no list of arrays stacked afterwards, which
    would need twice the memory), kept in file order whatever order threads finish in.
    """
    size = preprocessor.input_size
    shape = (len(labelled.images), size, size, 3)
    pixels = _pixel_store(shape, cache_path, in_memory_limit)
    if isinstance(pixels, np.memmap):
        progress(f"preparing {shape[0]} images into {cache_path} (memory-mapped)")

    def load(image: LabelledImage) -> np.ndarray | str:
        try:
            return preprocessor.prepare(image.read(), max_pixels=max_pixels)
        except (ImageDecodeError, OSError) as exc:
            return f"{image.name}: {exc}"

    grades, undecodable = [], []
    started = reported = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, shape[0], _CHUNK):
            chunk = labelled.images[start : start + _CHUNK]
            for image, result in zip(chunk, pool.map(load, chunk), strict=True):
                if isinstance(result, str):
                    progress(f"skipping {result}")
                    undecodable.append(image.name)
                    continue
                pixels[len(grades)] = result
                grades.append(image.grade)
            done, now = start + len(chunk), time.perf_counter()
            if now - reported >= _PROGRESS_EVERY_S and done < shape[0]:
                reported = now
                progress(f"prepared {done}/{shape[0]} images ({done / (now - started):.0f}/s)")
    if not grades:
        raise DatasetError(f"none of the {shape[0]} images of {labelled.origin} could be decoded")
    if isinstance(pixels, np.memmap):
        pixels.flush()
    progress(f"prepared {len(grades)} images at {size} px in {time.perf_counter() - started:.1f} s")
    description = _describe(labelled.origin, grades, len(labelled.missing), len(undecodable))
    return PreparedImages(
        pixels[: len(grades)],  # a view: a memory-mapped file stays on disk
        np.asarray(grades, dtype=np.int64),
        tuple(undecodable),
        description,
    )


# --- splitting, weighting and augmenting for training ---------------------------------------


def stratified_split(
    grades: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train and held-out indices holding ``val_fraction`` of every grade (at least one)."""
    rng = np.random.default_rng(seed)
    train, held_out = [], []
    for grade in np.unique(grades):
        members = rng.permutation(np.flatnonzero(grades == grade))
        n_val = max(1, round(members.size * val_fraction)) if members.size > 1 else 0
        held_out.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held_out))


def class_weights(grades: np.ndarray) -> np.ndarray:
    """Balanced weights ``n / (k * count_c)`` so a rare grade counts as much as a common one."""
    counts = np.bincount(grades, minlength=N_GRADES).astype(np.float64)
    present = counts > 0
    weights = np.zeros(N_GRADES)
    weights[present] = grades.size / (present.sum() * counts[present])
    return weights


def augment(pixels: np.ndarray, rng: np.random.Generator, *, ben_graham: bool) -> np.ndarray:
    """A random mirror, rotation, brightness and contrast per image: uint8 in, float32 out.

    A fundus has no canonical orientation beyond where the disc lies, so any angle is
    fair, and a mirror plus any rotation covers every flip. Pillow rotates a 299 px image
    in about 3 ms. Photometric jitter mimics cameras and exposure without touching the
    black frame, which serving always shows as black; on a Ben Graham image
    (``128 + 4 * (photo - local mean)``) a photo's brightness or contrast only scales the
    detail about 128, so that is what it does there.
    """
    count = len(pixels)
    background = 128 if ben_graham else 0
    mirror = rng.random(count) < 0.5
    angles = rng.uniform(0.0, 360.0, count)
    gain_b = rng.uniform(*BRIGHTNESS, (count, 1, 1, 1)).astype(np.float32)
    gain_c = rng.uniform(*CONTRAST, (count, 1, 1, 1)).astype(np.float32)
    out = np.empty(pixels.shape, dtype=np.float32)
    for i in range(count):
        image = Image.fromarray(pixels[i])
        if mirror[i]:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        rotated = image.rotate(
            angles[i], resample=Image.Resampling.BILINEAR, fillcolor=(background,) * 3
        )
        out[i] = np.asarray(rotated)
    if ben_graham:
        out = 128.0 + gain_b * gain_c * (out - 128.0)
    else:
        inside = out.max(axis=-1, keepdims=True) > FIELD_OF_VIEW_THRESHOLD
        out *= gain_b
        area = np.maximum(inside.sum(axis=(1, 2, 3), keepdims=True, dtype=np.float32), 1.0)
        mean = (out * inside).sum(axis=(1, 2, 3), keepdims=True) / (3.0 * area)
        out = np.where(inside, mean + gain_c * (out - mean), out)
    return np.clip(out, 0.0, 255.0, out=out)
