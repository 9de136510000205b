"""Evaluation pictures and tables: ROC curves, score histograms and the confusion matrix as CSV.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot, no display, no global
figure state), at 5x4 inches and 100 dpi. Every file is written atomically: to a temporary file in
the same folder, then moved into place with :func:`os.replace`, so a reader never sees a half
written file and an interrupted run leaves the previous file intact.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import secrets
from typing import Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .metrics import (
    ArrayLike,
    MetricInputError,
    _auroc,
    _is_unknown,
    _roc_points,
    _same_length,
    _scores,
)

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Figure size in inches and resolution of every picture.
FIGSIZE: Tuple[float, float] = (5.0, 4.0)
DPI: int = 100

_CORNER = "true \\ predicted"


@contextlib.contextmanager
def _atomic_path(path: PathLike) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success move it onto ``path``, else delete it."""
    final = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(final))
    os.makedirs(directory, exist_ok=True)
    base, ext = os.path.splitext(os.path.basename(final))
    tmp = os.path.join(directory, f".{base}.{os.getpid()}.{secrets.token_hex(4)}.tmp{ext}")
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def _new_figure() -> Tuple[Figure, Axes]:
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig: Figure, path: PathLike) -> str:
    final = os.fspath(path)
    fmt = os.path.splitext(final)[1].lstrip(".").lower() or "png"
    fig.tight_layout()
    with _atomic_path(final) as tmp:
        fig.savefig(tmp, format=fmt, dpi=DPI)
    logger.debug("wrote %s", final)
    return final


def save_roc(
    path: PathLike,
    scores: Mapping[str, ArrayLike],
    is_unknown: ArrayLike,
    title: Optional[str] = None,
) -> str:
    """Plot the ROC curve of detecting unknowns, one curve per score, AUROC in the legend.

    Args:
        path: Output file; the format follows the extension (``.png`` recommended).
        scores: Score name -> unknown score per sample (higher = more likely unknown).
        is_unknown: True for unknown (unseen-class) samples, one per sample.
        title: Figure title; defaults to "Unknown detection ROC".

    Returns:
        ``path`` as a string. When the test set lacks seen or unknown samples the ROC curve is
        undefined: a warning is logged and the figure says so instead of showing curves.

    Raises:
        MetricInputError: On an empty ``scores``, non-finite scores or a length mismatch.
    """
    positive = _is_unknown(is_unknown)
    if not scores:
        raise MetricInputError("scores is empty: give at least one {name: unknown_score} entry")
    arrays = {}
    for name, values in scores.items():
        arr = _scores(f"scores[{name!r}]", values)
        _same_length(**{f"scores[{name!r}]": arr, "is_unknown": positive})
        arrays[str(name)] = arr
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos

    fig, ax = _new_figure()
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1, label="chance (AUROC 50.00)")
    if n_pos and n_neg:
        for name, arr in arrays.items():
            fpr, tpr, _ = _roc_points(arr, positive)
            ax.plot(fpr, tpr, linewidth=1.5, label=f"{name} (AUROC {100 * _auroc(arr, positive):.2f})")
    else:
        logger.warning(
            "save_roc: the test set has %d seen and %d unknown samples, the ROC curve is undefined; "
            "writing %s without curves",
            n_neg,
            n_pos,
            os.fspath(path),
        )
        ax.text(
            0.5,
            0.5,
            f"ROC undefined:\n{n_neg} seen, {n_pos} unknown samples",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("false-positive rate (seen flagged unknown)")
    ax.set_ylabel("true-positive rate (unknown caught)")
    ax.set_title(title or "Unknown detection ROC")
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def save_score_hist(
    path: PathLike,
    score: ArrayLike,
    is_unknown: ArrayLike,
    name: str,
    threshold: Optional[float] = None,
    bins: int = 50,
) -> str:
    """Plot the distributions of an unknown score on seen and on unseen test samples.

    Both histograms share the same bins and are normalised to unit area, so groups of different
    sizes compare; the legend gives each group's count.

    Args:
        path: Output file; the format follows the extension (``.png`` recommended).
        score: Unknown score per sample (higher = more likely unknown).
        is_unknown: True for unknown (unseen-class) samples.
        name: Name of the score, used in the title and axis label.
        threshold: When given (and finite), drawn as a dashed vertical line.
        bins: Number of bins.

    Returns:
        ``path`` as a string. An empty group is simply not drawn.

    Raises:
        MetricInputError: On non-finite scores or a length mismatch.
    """
    arr = _scores("score", score)
    positive = _is_unknown(is_unknown)
    _same_length(score=arr, is_unknown=positive)
    edges = np.histogram_bin_edges(arr, bins=max(1, int(bins)))

    fig, ax = _new_figure()
    for mask, label, color in ((~positive, "seen", "tab:blue"), (positive, "unseen", "tab:orange")):
        group = arr[mask]
        if group.size:
            ax.hist(
                group, bins=edges.tolist(), density=True, alpha=0.55, color=color, label=f"{label} (n={group.size})"
            )
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(float(threshold), color="k", linestyle="--", linewidth=1, label=f"threshold {float(threshold):.4g}")
    ax.set_xlabel(f"{name} (higher = more likely unknown)")
    ax.set_ylabel("density")
    ax.set_title(f"{name}: seen vs unseen test samples")
    ax.legend(loc="best", fontsize="small")
    return _save(fig, path)


def write_confusion_csv(path: PathLike, cm: ArrayLike, class_names: Sequence[str]) -> str:
    """Write a (K+1)x(K+1) open-set confusion matrix as CSV (rows = truth, columns = prediction).

    The header row is ``"true \\ predicted"``, the K class names and ``"unknown"``; each following
    row starts with its true class name. Integer matrices are written as integers, others with
    full float precision, so :func:`read_confusion_csv` gives the same matrix back.

    Args:
        path: Output ``.csv`` file.
        cm: Square matrix of shape ``(K+1, K+1)``, the last row/column being unknown.
        class_names: The K seen-class names, in label order.

    Returns:
        ``path`` as a string.

    Raises:
        MetricInputError: When ``cm`` is not square or ``class_names`` does not hold K names.
    """
    matrix = np.asarray(cm)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < 2:
        raise MetricInputError(f"cm must be a square (K+1)x(K+1) matrix with K >= 1, got shape {matrix.shape}")
    names = [str(n) for n in class_names]
    k = matrix.shape[0] - 1
    if len(names) != k:
        raise MetricInputError(
            f"class_names has {len(names)} names but cm has shape {matrix.shape}, i.e. K={k} seen "
            f"classes plus unknown; give the {k} seen-class names ('unknown' is added)"
        )
    labels = names + ["unknown"]
    integer = np.issubdtype(matrix.dtype, np.integer) or matrix.dtype == bool
    final = os.fspath(path)
    with _atomic_path(final) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow([_CORNER] + labels)
            for label, row in zip(labels, matrix):
                cells = [str(int(v)) for v in row] if integer else [repr(float(v)) for v in row]
                writer.writerow([label] + cells)
    logger.debug("wrote %s", final)
    return final


def read_confusion_csv(path: PathLike) -> Tuple[np.ndarray, List[str]]:
    """Read a file written by :func:`write_confusion_csv`.

    Args:
        path: The CSV file.

    Returns:
        ``(cm, class_names)``: the matrix (int64 when every cell is an integer, else float64) and
        the K seen-class names (without ``"unknown"``).

    Raises:
        MetricInputError: When the file is not such a table.
    """
    with open(os.fspath(path), newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if len(rows) < 2 or not rows[0] or rows[0][-1] != "unknown":
        raise MetricInputError(f"{os.fspath(path)} is not a confusion-matrix CSV (header must end with 'unknown')")
    labels = rows[0][1:]
    body = rows[1:]
    if len(body) != len(labels) or any(len(r) != len(labels) + 1 for r in body):
        raise MetricInputError(f"{os.fspath(path)}: expected {len(labels)} rows of {len(labels) + 1} cells")
    cells = [r[1:] for r in body]
    try:
        matrix = np.array([[int(c) for c in r] for r in cells], dtype=np.int64)
    except ValueError:
        try:
            matrix = np.array([[float(c) for c in r] for r in cells], dtype=np.float64)
        except ValueError as err:
            raise MetricInputError(f"{os.fspath(path)}: a cell is not a number ({err})") from None
    return matrix, labels[:-1]


def save_metric_bars(
    path: PathLike,
    rows: Sequence[str],
    metrics: Mapping[str, Sequence[Sequence[float]]],
    title: Optional[str] = None,
    caption: Optional[str] = None,
) -> str:
    """Grouped horizontal bars: one group per row, one bar per metric, mean with the seeds' std as error bar.

    The legend sits outside the axes, right of them, so it never covers a bar.

    Args:
        path: Output file (``.png``).
        rows: Row names (top to bottom).
        metrics: Metric title -> per row, the values of its seeds (fractions; NaN and missing seeds
            are left out; a row without values gets no bar).
        title: Figure title.
        caption: Smaller lines under the title (what is compared: score, budget, seeds).

    Returns:
        ``path`` as a string.
    """
    if not rows or not metrics:
        raise MetricInputError("save_metric_bars needs at least one row and one metric")
    names = list(metrics)
    height = 0.8 / len(names)
    lines = 1 + (caption.count("\n") + 1 if caption else 0)
    fig = Figure(figsize=(8.5, 0.8 + 0.25 * lines + 0.45 * len(rows) * max(1, len(names)) ** 0.5), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(rows), dtype=float)
    for j, name in enumerate(names):
        per_row = metrics[name]
        if len(per_row) != len(rows):
            raise MetricInputError(f"metric {name!r} has {len(per_row)} rows of values, expected {len(rows)}")
        means, stds = [], []
        for values in per_row:
            v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float) * 100
            means.append(float(v.mean()) if v.size else np.nan)
            stds.append(float(v.std(ddof=1)) if v.size > 1 else 0.0)
        ax.barh(y + (j - (len(names) - 1) / 2) * height, means, height, xerr=stds, capsize=2, label=name)
    ax.set_yticks(y)
    ax.set_yticklabels(list(rows), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("% (mean over seeds; error bar: std)")
    ax.set_xlim(0, 100)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8)
    heading = title or "Comparison"
    ax.set_title(heading + (f"\n{caption}" if caption else ""), fontsize=9, loc="left")
    return _save(fig, path)


__all__ = [
    "DPI",
    "FIGSIZE",
    "read_confusion_csv",
    "save_metric_bars",
    "save_roc",
    "save_score_hist",
    "write_confusion_csv",
]
