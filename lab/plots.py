"""Evaluation figures as PNG files: the referable ROC curve and the grade confusion matrix.

Figures are built on ``matplotlib.figure.Figure`` with an Agg canvas, never through pyplot,
so no backend is chosen globally, no window opens, and threads may draw at once. The PNGs
carry no software or time metadata, so equal inputs write equal bytes.
"""

from __future__ import annotations

from os import PathLike

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

FIGURE_INCHES = 5.0
DPI = 100


def roc_curve_png(
    fpr: ArrayLike,
    tpr: ArrayLike,
    auc: float,
    path: str | PathLike[str],
    *,
    operating_point: tuple[float, float] | None = None,
) -> None:
    """Write the referable-DR ROC curve, with its AUC and the chosen ``(fpr, tpr)`` marked."""
    figure, axes = _figure()
    axes.plot([0, 1], [0, 1], linestyle="--", color="0.7", linewidth=1, label="chance")
    axes.plot(fpr, tpr, color="tab:blue", linewidth=2, label=f"ROC (AUC {auc:.3f})")
    if operating_point is not None:
        axes.plot(*operating_point, "o", color="tab:red", label="operating point")
    axes.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="1 - specificity (false positive rate)",
        ylabel="sensitivity (true positive rate)",
        title="Referable DR (grade >= 2)",
    )
    axes.legend(loc="lower right")
    _save(figure, path)


def confusion_matrix_png(
    matrix: ArrayLike, class_names: tuple[str, ...] | list[str], path: str | PathLike[str]
) -> None:
    """Write the confusion matrix: counts written in, colour by share of each true row."""
    counts = np.asarray(matrix)
    size = len(class_names)
    if counts.shape != (size, size):
        raise ValueError(f"matrix must be {size}x{size} for {size} classes, not {counts.shape}")
    rows = counts.sum(axis=1, keepdims=True)
    # a class absent from the truth has no row share; show it blank rather than divide by 0
    shares = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows != 0)
    figure, axes = _figure()
    axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for (row, column), count in np.ndenumerate(counts):
        colour = "white" if shares[row, column] > 0.5 else "black"
        axes.text(column, row, str(count), ha="center", va="center", color=colour)
    axes.set(
        xticks=range(size),
        yticks=range(size),
        xlabel="predicted grade",
        ylabel="true grade",
        title="Confusion matrix (colour: row share)",
    )
    axes.set_xticklabels(class_names, rotation=30, ha="right")
    axes.set_yticklabels(class_names)
    _save(figure, path)


def _figure() -> tuple[Figure, Axes]:
    """A square figure of ``FIGURE_INCHES`` at ``DPI`` with one set of axes, off pyplot."""
    figure = Figure(figsize=(FIGURE_INCHES, FIGURE_INCHES), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _save(figure: Figure, path: str | PathLike[str]) -> None:
    """Write ``figure`` as a PNG without the metadata that would make equal figures differ."""
    figure.savefig(path, format="png", dpi=DPI, metadata={"Software": None})
