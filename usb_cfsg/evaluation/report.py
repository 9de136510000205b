"""Plain-text summary of open-set metrics, short enough for one screen of a log or terminal.

FPR95 appears in both conventions: ``fpr95`` with the unknown images as the positive class
(OpenOOD), ``fpr95_id`` with the seen-class (in-distribution) images as the positive class (MCM,
GL-MCM). With the Semantic Shift Benchmark split a third table gives AUROC, both FPR95s and the
unknown recall of the headline score per difficulty group of the unknown classes.
"""

from __future__ import annotations

import math
import os
from numbers import Number
from typing import Any, List, Mapping, Optional, Sequence, Tuple

#: Headline rows: (metrics key, label). All are fractions shown as percentages.
HEADLINE: Tuple[Tuple[str, str], ...] = (
    ("closed_acc", "closed-set accuracy (seen)"),
    ("auroc", "AUROC (unknown = positive)"),
    ("fpr95", "FPR@95%TPR (unknown = positive)"),
    ("fpr95_id", "FPR@95%TPR (seen = positive, MCM)"),
    ("open_bacc", "open-set balanced accuracy"),
    ("unknown_recall", "unknown recall"),
    ("seen_acc", "seen accuracy (K+1-way)"),
    ("h_score", "H-score"),
    ("macro_f1", "macro-F1 (K+1 classes)"),
)

#: Columns of the per-score table: (metrics key, column title).
SCORE_COLUMNS: Tuple[Tuple[str, str], ...] = (
    ("auroc", "AUROC"),
    ("fpr95", "FPR95"),
    ("fpr95_id", "FPR95-ID"),
    ("open_bacc", "open bAcc"),
    ("unknown_recall", "unk. recall"),
    ("h_score", "H-score"),
)

#: Columns of the per-difficulty table (class_split: ssb): (metrics key, column title).
DIFFICULTY_COLUMNS: Tuple[Tuple[str, str], ...] = (
    ("auroc", "AUROC"),
    ("fpr95", "FPR95"),
    ("fpr95_id", "FPR95-ID"),
    ("unknown_recall", "unk. recall"),
)

#: Columns of the localization table (images with object boxes): (metrics key, column title).
LOCALIZATION_COLUMNS: Tuple[Tuple[str, str], ...] = (
    ("pointing_acc", "pointing"),
    ("mass_in_box", "mass in box"),
    ("kept_in_box", "kept in box"),
    ("chance", "chance"),
)

_COUNT_KEYS = ("num_test_seen", "num_test_unseen")
_HANDLED = (
    {key for key, _ in HEADLINE}
    | set(_COUNT_KEYS)
    | {
        "threshold",
        "threshold_source",
        "warning",
        "scores",
        "difficulty",
        "localization",
        "calibration",
        "checkpoint",
        "demo_clip_sha256",
    }
)


def _is_number(value: Any) -> bool:
    return isinstance(value, Number) and not isinstance(value, bool)


def format_percent(value: Any) -> str:
    """Format a fraction as a percentage with 2 decimals: 0.8473 -> "84.73%".

    Args:
        value: A fraction, or None / a missing value.

    Returns:
        The percentage; ``"n/a"`` for NaN (an undefined metric), ``"-"`` for None or a non-number.
    """
    if not _is_number(value):
        return "-"
    value = float(value)
    if math.isnan(value):
        return "n/a"
    return f"{100.0 * value:.2f}%"


def _format_raw(value: Any) -> str:
    if _is_number(value):
        value = float(value)
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    return str(value)


#: Width the summary fits in (a terminal's).
WIDTH = 80


def short_path(path: str) -> str:
    """``path`` relative to the working folder when that is shorter, else as it is (never cut)."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive
        return path
    return rel if len(rel) < len(path) else path


def _fit(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters: a path relative to the working folder when shorter,
    then its end after ``...`` (a path's end is the part that tells runs apart)."""
    if len(text) <= width:
        return text
    if os.path.isabs(text):
        try:
            rel = os.path.relpath(text)
        except ValueError:  # another drive
            rel = text
        text = rel if len(rel) < len(text) else text
    return text if len(text) <= width else "..." + text[-(max(width, 4) - 3) :]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    """Left-aligned first column, right-aligned others, two spaces apart, with a rule."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = [str(cells[0]).ljust(widths[0])]
        parts += [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join(parts).rstrip()

    return [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]


def format_summary(metrics: Mapping[str, Any], title: Optional[str] = None) -> str:
    """Format open-set metrics as a one-screen plain-text table.

    The headline block lists the keys of :func:`usb_cfsg.evaluation.metrics.compute_openset_metrics`
    that are present (fractions as percentages with 2 decimals, NaN as ``n/a``), the threshold and
    the test-set counts, then any other scalar entries as they are. When ``metrics["scores"]`` is a
    mapping ``{score name: {metric: value}}``, a second table has one row per score name with its
    AUROC, FPR95 (both conventions), open balanced accuracy, unknown recall and H-score (``-``
    where missing). When ``metrics["difficulty"]`` maps difficulty groups to metrics, a third table
    has one row per group (number of unknown images, AUROC, FPR95, FPR95-ID, unknown recall). The
    threshold's source, the calibration's source, the checkpoint (its whole path, relative to the
    working folder when shorter) and the demo CLIP build's sha256 (when the run used one) close the
    summary, then ``metrics["warning"]`` when there is one (the K+1-way prediction rejects many seen
    images, and why).

    Args:
        metrics: The metrics dictionary.
        title: First line; defaults to "Open-set evaluation".

    Returns:
        The summary, lines joined by newlines, without a trailing newline.
    """
    lines: List[str] = [title or "Open-set evaluation"]
    rows: List[List[str]] = []
    for key, label in HEADLINE:
        if key in metrics:
            rows.append([label, format_percent(metrics[key])])
    if "threshold" in metrics:
        rows.append(["threshold (score >= t: unknown)", _format_raw(metrics["threshold"])])
    for key, label in zip(_COUNT_KEYS, ("seen-class test images", "unseen-class test images")):
        if key in metrics:
            rows.append([label, str(metrics[key])])
    for key in sorted(k for k in metrics if k not in _HANDLED):
        value = metrics[key]
        if _is_number(value) or isinstance(value, (str, bool)):
            rows.append([str(key), _format_raw(value)])
    if rows:
        label_width = max(len(r[0]) for r in [["metric"], *rows])
        rows = [[r[0], _fit(r[1], WIDTH - label_width - 2)] for r in rows]
        lines += _table(["metric", "value"], rows)

    scores = metrics.get("scores")
    if isinstance(scores, Mapping) and scores:
        score_rows = []
        for name, values in scores.items():
            values = values if isinstance(values, Mapping) else {}
            score_rows.append([str(name)] + [format_percent(values.get(key)) for key, _ in SCORE_COLUMNS])
        lines.append("")
        lines += _table(["score"] + [t for _, t in SCORE_COLUMNS], score_rows)

    groups = metrics.get("difficulty")
    if isinstance(groups, Mapping) and groups:
        group_rows = []
        for name, values in groups.items():
            values = values if isinstance(values, Mapping) else {}
            count = values.get("num_test_unseen")
            group_rows.append(
                [f"unknown: {name}", "-" if count is None else str(count)]
                + [format_percent(values.get(key)) for key, _ in DIFFICULTY_COLUMNS]
            )
        lines.append("")
        lines += _table(["difficulty (vs all seen)", "images"] + [t for _, t in DIFFICULTY_COLUMNS], group_rows)

    loc = metrics.get("localization")
    if isinstance(loc, Mapping) and loc:
        loc_rows = []
        for name, values in [("all", loc)] + [
            (g, loc[g]) for g in ("seen", "unseen") if isinstance(loc.get(g), Mapping)
        ]:
            loc_rows.append(
                [f"{name} ({values.get('num_images', '-')} images)"]
                + [format_percent(values.get(key)) for key, _ in LOCALIZATION_COLUMNS]
            )
        lines.append("")
        lines += _table(["localization (box)"] + [t for _, t in LOCALIZATION_COLUMNS], loc_rows)
        lines.append(f"map: {loc.get('map')}; grid {loc.get('grid')}x{loc.get('grid')}; kept: {loc.get('keep_source')}")

    if isinstance(metrics.get("threshold_source"), str):
        lines += ["", f"threshold: {metrics['threshold_source']}"]
    calibration = metrics.get("calibration")
    if isinstance(calibration, Mapping) and calibration.get("source"):
        lines.append(f"calibration: {calibration['source']}")
    if isinstance(metrics.get("checkpoint"), str):  # the whole path (relative when shorter), on its own line
        lines.append(f"checkpoint: {short_path(metrics['checkpoint'])}")
    if isinstance(metrics.get("demo_clip_sha256"), str):  # 75 characters: the whole hash, on its own line
        lines.append(f"demo CLIP: {metrics['demo_clip_sha256']}")
    if isinstance(metrics.get("warning"), str):
        lines += ["", f"WARNING: {metrics['warning']}"]
    return "\n".join(lines)


__all__ = ["DIFFICULTY_COLUMNS", "HEADLINE", "SCORE_COLUMNS", "format_percent", "format_summary", "short_path"]
