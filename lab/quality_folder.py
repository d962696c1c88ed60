"""A programme's own photographs, labelled gradable or ungradable by folder, for the quality check.

Layout (any depth below the label; a subfolder such as a camera name becomes a kind of its
own in the figures)::

    DIR/gradable/…            photographs a grader would grade
    DIR/ungradable/…          photographs a grader would send back
    DIR/ungradable/blurred/…  … and, where the folder is named after a reason
                              (``common.imaging.gradability.REASONS``), the reason expected

Each image is decoded as the worker decodes it, so the check sees what serving would see.
A file that will not decode is skipped and named, never fatal: a folder of real
photographs usually holds a stray thumbnail database or a half-copied file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from PIL import Image

from common.imaging.decode import ImageDecodeError
from common.screening.quality import REASONS
from lab.quality_eval import QualitySample

GRADABLE, UNGRADABLE = "gradable", "ungradable"
log = logging.getLogger(__name__)

Decoder = Callable[[bytes], Image.Image]


class QualityFolderError(ValueError):
    """A folder that is not laid out as the quality evaluation reads it."""


class QualityFolder:
    """The labelled images under ``root``, yielded as :class:`QualitySample`, one at a time."""

    def __init__(self, root: Path, decode: Decoder) -> None:
        if not root.is_dir():
            raise QualityFolderError(f"{root} is not a folder")
        labels = [root / GRADABLE, root / UNGRADABLE]
        if not any(label.is_dir() for label in labels):
            raise QualityFolderError(
                f"{root} holds neither {GRADABLE}/ nor {UNGRADABLE}/: "
                "put the photographs a grader would grade in gradable/ and those they would "
                "send back in ungradable/ (optionally ungradable/<reason>/)"
            )
        self.root = root
        self.decode = decode
        self.files = [
            path
            for label in labels
            if label.is_dir()
            for path in sorted(label.rglob("*"))
            if path.is_file() and not _hidden(path.relative_to(root))
        ]
        if not self.files:
            raise QualityFolderError(f"no files under {labels[0]} or {labels[1]}")
        self.undecodable: list[str] = []

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[QualitySample]:
        self.undecodable = []
        for path in self.files:
            relative = path.relative_to(self.root)
            try:
                image = self.decode(path.read_bytes())
            except (ImageDecodeError, OSError) as exc:
                log.info("%s skipped: %s", relative, exc)
                self.undecodable.append(relative.as_posix())
                continue
            yield _sample(relative, image)


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _sample(relative: Path, image: Image.Image) -> QualitySample:
    """The sample for ``DIR/<label>/[<sub>/…]<file>``: its kind is the folder it lies in."""
    label, *folders = relative.parent.parts
    ungradable = label == UNGRADABLE
    reason = folders[0] if ungradable and folders and folders[0] in REASONS else None
    return QualitySample(
        kind=relative.parent.as_posix(),
        image=image,
        expected_reason=reason,
        ungradable=ungradable,
        name=relative.as_posix(),
    )
