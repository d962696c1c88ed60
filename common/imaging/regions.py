"""Connected regions of a boolean mask, in numpy alone: the field of view's geometry.

Run-length labelling (runs on adjacent rows that overlap are one region) is fast enough
at the 128–256 px the callers work at and needs no SciPy or OpenCV.
"""

from __future__ import annotations

import numpy as np


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, start and end (exclusive) of every horizontal run of True, row by row."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    steps = np.diff(padded, axis=1)
    rows, starts = np.nonzero(steps == 1)
    _, ends = np.nonzero(steps == -1)
    return rows, starts, ends


def _run_labels(rows: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """A 4-connected region label per run: runs on adjacent rows that overlap share one."""
    parent = list(range(rows.size))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first = np.searchsorted(rows, np.arange(int(rows[-1]) + 2)).tolist()
    s, e = starts.tolist(), ends.tolist()
    for row in range(1, len(first) - 1):
        i, i_end, j, j_end = first[row - 1], first[row], first[row], first[row + 1]
        while i < i_end and j < j_end:
            if s[i] < e[j] and s[j] < e[i]:
                parent[root(j)] = root(i)
            if e[i] < e[j]:
                i += 1
            else:
                j += 1
    labels = np.array(parent)
    while not np.array_equal(labels[labels], labels):
        labels = labels[labels]
    return labels


def _paint(
    shape: tuple[int, int], rows: np.ndarray, starts: np.ndarray, ends: np.ndarray
) -> np.ndarray:
    """A boolean mask of ``shape`` that is True on the given runs."""
    steps = np.zeros((shape[0], shape[1] + 1), dtype=np.int32)
    np.add.at(steps, (rows, starts), 1)
    np.add.at(steps, (rows, ends), -1)
    return np.cumsum(steps, axis=1)[:, : shape[1]] > 0


def largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of ``mask``: text in the corners and glints drop out."""
    rows, starts, ends = _runs(mask)
    if rows.size == 0:
        return mask
    labels = _run_labels(rows, starts, ends)
    keep = labels == np.argmax(np.bincount(labels, weights=ends - starts))
    return _paint(mask.shape, rows[keep], starts[keep], ends[keep])


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every enclosed hole filled: dark vessels and lesions are retina too."""
    rows, starts, ends = _runs(~mask)
    if rows.size == 0:
        return mask
    height, width = mask.shape
    labels = _run_labels(rows, starts, ends)
    on_edge = (rows == 0) | (rows == height - 1) | (starts == 0) | (ends == width)
    outside = np.isin(labels, labels[on_edge])
    return ~_paint(mask.shape, rows[outside], starts[outside], ends[outside])
