"""Client file names as relative paths: one normalisation and one metadata-matching rule.

The API keeps the path a client sent, relative to the folder it submitted
(``P001/left.jpg``), as the image's filename, because a folder-per-patient tree repeats
bare names (every patient has a ``left.jpg``). Metadata rows are matched against those
paths. The CLI resolves a programme's metadata CSV by the same rule over the whole
submission before uploading it in chunks, so both sides agree on which row describes
which photograph, and a bare name never lands on a second person's image.
"""

from __future__ import annotations

import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

MAX_PATH_LENGTH = 255
UNNAMED = "unnamed"


def relative_path(raw: str | None) -> str:
    """A client's path made safe to store and compare: '/'-separated, relative, printable.

    Backslashes become '/', empty, '.' and '..' segments and control characters are
    dropped, and the result is cut to 255 characters. It names an image for people and
    for metadata; it is never used as a path on our disk.
    """
    segments = []
    for segment in (raw or "").replace("\\", "/").split("/"):
        # Control characters go before the dot check, so "..\x00" cannot pass as a name.
        segment = "".join(ch for ch in segment if unicodedata.category(ch)[0] != "C").strip()
        if segment not in ("", ".", ".."):
            segments.append(segment)
    return "/".join(segments)[:MAX_PATH_LENGTH].rstrip("/") or UNNAMED


def base_name(path: str) -> str:
    """The last segment of a normalised relative path."""
    return path.rpartition("/")[2]


@dataclass(frozen=True)
class Resolution:
    """Which file each metadata row describes, and the rows that describe none or several."""

    matches: dict[str, str] = field(default_factory=dict)  # file path -> row key
    unmatched: list[str] = field(default_factory=list)  # row keys naming no file
    ambiguous: list[str] = field(default_factory=list)  # one sentence per ambiguity


def resolve_rows(keys: Iterable[str], paths: Sequence[str]) -> Resolution:
    """Match metadata row keys to uploaded paths; never guess between two photographs.

    A key equal to a path matches that path. A bare key (no '/') that equals no path
    matches by base name, but only when exactly one uploaded file has that base name.
    A key matching several files, or a file matched by several keys, is ambiguous.
    """
    counts = Counter(paths)
    by_base: dict[str, list[str]] = defaultdict(list)
    for path in counts:
        by_base[base_name(path)].append(path)
    resolution = Resolution()
    for key in keys:
        if key in counts:
            candidates = [key]
        elif "/" not in key:
            candidates = sorted(by_base.get(key, []))
        else:
            candidates = []
        if not candidates:
            resolution.unmatched.append(key)
        elif len(candidates) > 1 or counts[candidates[0]] > 1:
            files = [path for path in candidates for _ in range(counts[path])]
            resolution.ambiguous.append(
                f"metadata row {key!r} matches {len(files)} files ({', '.join(files[:10])}); "
                "key each row by the file's path relative to the folder submitted"
            )
        elif candidates[0] in resolution.matches:
            earlier = resolution.matches[candidates[0]]
            resolution.ambiguous.append(
                f"metadata rows {earlier!r} and {key!r} both describe {candidates[0]!r}"
            )
        else:
            resolution.matches[candidates[0]] = key
    return resolution
