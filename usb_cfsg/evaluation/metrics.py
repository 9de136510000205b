"""Open-set semi-supervised evaluation metrics (DESIGN.md §4): numpy arrays in, Python floats out.

Conventions used by every function here:

* ``num_seen`` (K) seen classes, labelled ``0 .. K-1``.
* ``y_open``: open-set ground truth in ``0 .. K``; the label ``K`` means "unknown" (a test image
  of an unseen class).
* ``closed_pred``: the classifier's argmax over the K seen classes, in ``0 .. K-1``.
* ``unknown_score``: a float per sample, **higher = more likely unknown**. For detection metrics
  (AUROC, FPR@95%TPR) the unknown samples are the **positive** class.
* ``open_pred``: a (K+1)-way prediction in ``0 .. K``, made by :func:`open_set_predictions`.

Rates are fractions in ``[0, 1]`` (not percentages). A metric that is undefined on the given test
set (for example AUROC when the test set holds no unknown samples) is ``float('nan')`` and a
warning is logged; it never raises from deep inside a third-party library. Malformed input
(NaN/inf scores, length mismatches, labels out of range) raises :class:`MetricInputError`, a
``ValueError``, whose message names the offending counts and indices.

Note that ``json.dump`` writes NaN as the non-standard token ``NaN``; callers that need strict JSON
should map NaN to ``None`` first.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from sklearn import metrics as skm

from ..errors import UsbCfsgError

logger = logging.getLogger(__name__)

ArrayLike = Union[np.ndarray, Sequence[float], Sequence[int], Sequence[bool]]

#: Keys of the dictionary returned by :func:`compute_openset_metrics`, in display order.
METRIC_KEYS: Tuple[str, ...] = (
    "closed_acc",
    "auroc",
    "fpr95",
    "fpr95_id",
    "open_bacc",
    "unknown_recall",
    "seen_acc",
    "h_score",
    "macro_f1",
    "threshold",
    "num_test_seen",
    "num_test_unseen",
)

_MAX_SHOWN = 5  # indices quoted in an error message


class MetricInputError(UsbCfsgError, ValueError):
    """The arrays given to a metric are malformed (shape, length, range or non-finite values)."""


# --------------------------------------------------------------------------- input validation


def _indices(mask: np.ndarray) -> str:
    """Describe where ``mask`` is true: "indices [3, 8, 11, ...]"."""
    idx = np.flatnonzero(mask)
    shown = ", ".join(str(int(i)) for i in idx[:_MAX_SHOWN])
    more = ", ..." if idx.size > _MAX_SHOWN else ""
    return f"indices [{shown}{more}]"


def _as_1d(name: str, values: ArrayLike) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise MetricInputError(f"{name} must be a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise MetricInputError(f"{name} is empty")
    return arr


def _check_num_seen(num_seen: int) -> int:
    if isinstance(num_seen, bool) or not isinstance(num_seen, (int, np.integer)):
        raise MetricInputError(f"num_seen must be an int (the number K of seen classes), got {num_seen!r}")
    if num_seen < 1:
        raise MetricInputError(f"num_seen must be >= 1 (the number K of seen classes), got {num_seen}")
    return int(num_seen)


def _labels(name: str, values: ArrayLike, high: int, meaning: str) -> np.ndarray:
    """Validate integer labels in ``0 .. high`` and return them as int64."""
    arr = _as_1d(name, values)
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    elif not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.number):
            raise MetricInputError(f"{name} must hold integer class labels, got dtype {arr.dtype}")
        as_float = arr.astype(np.float64)
        bad = ~np.isfinite(as_float) | (as_float != np.round(as_float))
        if bad.any():
            raise MetricInputError(
                f"{name} must hold integer class labels; {int(bad.sum())} of {arr.size} are not "
                f"integers, at {_indices(bad)}"
            )
        arr = as_float
    arr = arr.astype(np.int64)
    bad = (arr < 0) | (arr > high)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise MetricInputError(
            f"{name} has {int(bad.sum())} of {arr.size} labels outside 0..{high} ({meaning}), "
            f"at {_indices(bad)}; first bad value {int(arr[first])} at index {first}"
        )
    return arr


def _y_open(values: ArrayLike, num_seen: int) -> np.ndarray:
    return _labels("y_open", values, num_seen, f"num_seen={num_seen}; label {num_seen} means unknown")


def _closed_pred(values: ArrayLike, num_seen: int) -> np.ndarray:
    return _labels("closed_pred", values, num_seen - 1, f"the argmax over num_seen={num_seen} seen classes")


def _open_pred(values: ArrayLike, num_seen: int) -> np.ndarray:
    return _labels("open_pred", values, num_seen, f"num_seen={num_seen}; label {num_seen} means unknown")


def _scores(name: str, values: ArrayLike) -> np.ndarray:
    """Validate a float score array: 1-D, non-empty, numeric, every value finite."""
    arr = _as_1d(name, values)
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise MetricInputError(f"{name} must hold numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr)
    if bad.any():
        n_nan = int(np.isnan(arr).sum())
        raise MetricInputError(
            f"{name} has {int(bad.sum())} of {arr.size} non-finite values "
            f"({n_nan} NaN, {int(bad.sum()) - n_nan} inf) at {_indices(bad)}"
        )
    return arr


def _is_unknown(values: ArrayLike) -> np.ndarray:
    """Validate the boolean "is unknown" mask (bool, or numbers that are all 0 or 1)."""
    arr = _as_1d("is_unknown", values)
    if arr.dtype == bool:
        return arr
    if not np.issubdtype(arr.dtype, np.number):
        raise MetricInputError(f"is_unknown must be boolean (or 0/1), got dtype {arr.dtype}")
    bad = (arr != 0) & (arr != 1)
    if bad.any():
        raise MetricInputError(
            f"is_unknown must be boolean (or 0/1); {int(bad.sum())} of {arr.size} values are neither, "
            f"at {_indices(bad)}"
        )
    return arr == 1


def _same_length(**arrays: np.ndarray) -> None:
    lengths = {name: int(a.shape[0]) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        raise MetricInputError(f"length mismatch: {detail} entries")


def _check_threshold(threshold: float) -> float:
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise MetricInputError(f"threshold must be a number, got {threshold!r}") from None
    if math.isnan(value):
        raise MetricInputError("threshold is NaN")
    return value


def _check_tpr(tpr: float) -> float:
    value = float(tpr)
    if not 0.0 < value <= 1.0:
        raise MetricInputError(f"tpr must be in (0, 1], got {tpr!r}")
    return value


def _warn_undefined(num_seen_samples: int, num_unknown: int, what: str) -> bool:
    """Log a warning and return True when one of the two groups is empty."""
    missing = []
    if num_unknown == 0:
        missing.append("no unknown (unseen-class) samples")
    if num_seen_samples == 0:
        missing.append("no seen-class samples")
    if not missing:
        return False
    logger.warning(
        "the test set has %s (%d seen, %d unknown): %s undefined, reported as NaN",
        " and ".join(missing),
        num_seen_samples,
        num_unknown,
        what,
    )
    return True


# --------------------------------------------------------------------------- core computations
#
# Everything scikit-learn computes is delegated to it (roc_auc_score, roc_curve, confusion_matrix,
# balanced_accuracy_score, f1_score, accuracy_score); the input checks above and the NaN rules
# (an undefined metric is NaN with one warning, never an exception from inside scikit-learn)
# stay here. Otsu's threshold is ours: scikit-learn has none, and scikit-image's bins the scores.


@contextlib.contextmanager
def _quiet_sklearn() -> Iterator[None]:
    """Silence scikit-learn's warnings about classes absent from the truth or the prediction.

    The cases they flag are handled by the NaN rules above (and documented per function).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """AUROC (ties count one half); both classes must be present."""
    return float(skm.roc_auc_score(positive.astype(np.int64), score))


def _roc_points(score: np.ndarray, positive: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) at every distinct score, led by (0, 0) at +inf; NaN for an empty group."""
    with _quiet_sklearn():
        fpr, tpr, thresholds = skm.roc_curve(positive.astype(np.int64), score, pos_label=1, drop_intermediate=False)
    thresholds = np.asarray(thresholds, dtype=np.float64).copy()
    thresholds[0] = np.inf  # scikit-learn < 1.3 wrote max(score) + 1 here
    n_pos = int(positive.sum())
    if n_pos == 0:
        tpr = np.full(tpr.shape, np.nan)
    if n_pos == positive.size:
        fpr = np.full(fpr.shape, np.nan)
    return fpr.astype(np.float64), tpr.astype(np.float64), thresholds


#: How an FPR@TPR threshold is chosen (see :func:`fpr_at_tpr` and :func:`fpr_at_tpr_id`):
#: ``openood`` = the first point with TPR >= tpr on scikit-learn's thinned ROC curve (OpenOOD),
#: ``full`` = the same on the full ROC curve (every distinct score a point),
#: ``mcm`` = the point whose TPR is closest to tpr, the lowest threshold among equals (MCM / GL-MCM).
FPR_RULES: Tuple[str, ...] = ("openood", "full", "mcm")


def _fpr_at_tpr(score: np.ndarray, positive: np.ndarray, tpr: float, rule: str = "full") -> float:
    """FPR at the ROC point that ``rule`` (:data:`FPR_RULES`) picks for the target ``tpr``."""
    if rule == "openood":
        # Jingkang50/OpenOOD openood/evaluators/metrics.py auc_and_fpr_recall (commit 3c35632):
        # roc_curve with its default drop_intermediate=True, then the first TPR >= tpr
        with _quiet_sklearn():
            fpr, tprs, _ = skm.roc_curve(positive.astype(np.int64), score)
        return float(fpr[int(np.argmax(tprs >= tpr))])
    fpr, tprs, _ = _roc_points(score, positive)
    n_pos = int(positive.sum())
    if rule == "mcm":
        # the threshold whose recall is closest to tpr, among the distinct scores down to the first
        # that reaches full recall; the lowest threshold wins a tie (MCM's fpr_and_fdr_at_recall)
        last = int(np.argmax(tprs >= 1.0))
        recall, fprs = tprs[1 : last + 1][::-1], fpr[1 : last + 1][::-1]  # lowest threshold first
        return float(fprs[int(np.argmin(np.abs(recall - tpr)))])
    if rule != "full":
        raise MetricInputError(f"FPR rule must be one of {', '.join(FPR_RULES)}, got {rule!r}")
    # Compare true-positive counts, not rates: 0.95 * 20 must need 19 positives, not 20 (1e-9 absorbs
    # the float error in tpr * n).
    needed = max(1, math.ceil(tpr * n_pos - 1e-9))
    index = int(np.argmax(np.rint(tprs * n_pos) >= needed))
    return float(fpr[index])


def _confusion(y_open: np.ndarray, open_pred: np.ndarray, num_seen: int) -> np.ndarray:
    return skm.confusion_matrix(y_open, open_pred, labels=np.arange(num_seen + 1)).astype(np.int64)


def _harmonic(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):
        return float("nan")
    if a + b == 0.0:
        return 0.0
    return 2.0 * a * b / (a + b)


def _open_metrics(y_open: np.ndarray, open_pred: np.ndarray, num_seen: int) -> Dict[str, float]:
    """open_bacc, unknown_recall, seen_acc, h_score and macro_f1 of a (K+1)-way prediction."""
    k = num_seen
    unknown = y_open == k
    seen = ~unknown
    with _quiet_sklearn():
        # classes absent from the truth are skipped (their recall is undefined)
        open_bacc = float(skm.balanced_accuracy_score(y_open, open_pred))
        # the average runs over the classes in the truth or the prediction; each has 2TP+FP+FN > 0
        f1 = float(skm.f1_score(y_open, open_pred, average="macro", zero_division=0))
        recall = float(skm.accuracy_score(y_open[unknown], open_pred[unknown])) if unknown.any() else float("nan")
        seen_acc = float(skm.accuracy_score(y_open[seen], open_pred[seen])) if seen.any() else float("nan")
    return {
        "open_bacc": open_bacc,
        "unknown_recall": recall,
        "seen_acc": seen_acc,
        "h_score": _harmonic(seen_acc, recall),
        "macro_f1": f1,
    }


def _otsu(score: np.ndarray) -> float:
    values, counts = np.unique(score, return_counts=True)
    if values.size == 1:
        logger.warning(
            "otsu_threshold: all %d scores equal %g, no split exists; returning the next float "
            "above it, so no sample is flagged unknown",
            score.size,
            values[0],
        )
        return float(np.nextafter(values[0], np.inf))
    centred = values - score.mean()  # shift for numerical stability; Otsu is shift-invariant
    n = float(score.size)
    below = np.cumsum(counts)[:-1].astype(np.float64)  # samples at or below each split
    sum_below = np.cumsum(centred * counts)[:-1]
    total = float(np.sum(centred * counts))
    w0 = below / n
    w1 = 1.0 - w0
    mu0 = sum_below / below
    mu1 = (total - sum_below) / (n - below)
    between = w0 * w1 * (mu0 - mu1) ** 2
    i = int(np.argmax(between))
    lo, hi = float(values[i]), float(values[i + 1])
    mid = lo + (hi - lo) / 2.0
    if not lo < mid <= hi:  # adjacent floats: the midpoint rounds onto ``lo``
        mid = hi
    return mid


# --------------------------------------------------------------------------- public API


def closed_set_accuracy(y_open: ArrayLike, closed_pred: ArrayLike, num_seen: int) -> float:
    """Top-1 accuracy of the closed-set (K-way) prediction over the seen-class samples only.

    Unknown samples (``y_open == num_seen``) are ignored: a K-way classifier cannot be right on
    them. This is the "seen-class accuracy" of DESIGN.md §4 and of the CFSG-CLIP paper.

    Args:
        y_open: Open-set ground truth, ``0 .. K`` (``K`` = unknown).
        closed_pred: The classifier's argmax, ``0 .. K-1``.
        num_seen: K, the number of seen classes.

    Returns:
        The fraction of seen-class samples with ``closed_pred == y_open``; NaN (with a logged
        warning) when the test set holds no seen-class sample.

    Raises:
        MetricInputError: On a length mismatch or labels out of range.
    """
    k = _check_num_seen(num_seen)
    y = _y_open(y_open, k)
    pred = _closed_pred(closed_pred, k)
    _same_length(y_open=y, closed_pred=pred)
    seen = y < k
    if not seen.any():
        logger.warning("the test set has no seen-class samples: closed-set accuracy undefined, reported as NaN")
        return float("nan")
    return float(np.mean(pred[seen] == y[seen]))


def auroc(unknown_score: ArrayLike, is_unknown: ArrayLike) -> float:
    """Area under the ROC curve of detecting unknown samples (unknown = positive).

    ``sklearn.metrics.roc_auc_score(is_unknown, unknown_score)``: the trapezoidal area under the
    ROC curve, equal to the probability that a random unknown sample scores higher than a random
    seen sample, ties counting one half. All-tied scores give 0.5.

    Args:
        unknown_score: Score per sample, higher = more likely unknown.
        is_unknown: True for unknown (unseen-class) samples.

    Returns:
        AUROC in ``[0, 1]``; NaN (with a logged warning) when only one of the two groups is
        present.

    Raises:
        MetricInputError: On non-finite scores or a length mismatch.
    """
    score = _scores("unknown_score", unknown_score)
    positive = _is_unknown(is_unknown)
    _same_length(unknown_score=score, is_unknown=positive)
    n_pos = int(positive.sum())
    if _warn_undefined(positive.size - n_pos, n_pos, "AUROC"):
        return float("nan")
    return float(_auroc(score, positive))


def _fpr_inputs(unknown_score: ArrayLike, is_unknown: ArrayLike, what: str) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """Checked ``(score, is_unknown)`` of an FPR metric; None (with a logged warning) when one group is absent."""
    score = _scores("unknown_score", unknown_score)
    positive = _is_unknown(is_unknown)
    _same_length(unknown_score=score, is_unknown=positive)
    n_pos = int(positive.sum())
    if _warn_undefined(positive.size - n_pos, n_pos, what):
        return None
    return score, positive


def fpr_at_tpr(unknown_score: ArrayLike, is_unknown: ArrayLike, tpr: float = 0.95, rule: str = "openood") -> float:
    """False-positive rate at the threshold that catches a fraction ``tpr`` of the unknowns (FPR95).

    Unknown = positive, OpenOOD's convention. A sample is flagged unknown when ``score >= t``.

    ``rule`` picks the threshold (:data:`FPR_RULES`):

    - ``openood`` (default): OpenOOD's code (Jingkang50/OpenOOD, ``openood/evaluators/metrics.py``,
      ``auc_and_fpr_recall``, commit 3c35632): ``sklearn.metrics.roc_curve`` with its default
      ``drop_intermediate=True`` and the first point with TPR >= ``tpr``. The thinned curve drops
      points that lie on a straight segment, so with **tied** scores the first point kept may come
      after the first point that reaches ``tpr``, and the FPR may be higher than ``full``'s.
    - ``full``: the first point with TPR >= ``tpr`` on the full ROC curve (every distinct score):
      ``t`` is the largest score such that at least ``tpr`` of the unknowns have ``score >= t``
      (this project's earlier rule). Equal to ``openood`` when no two scores tie.
    - ``mcm``: the point whose TPR is closest to ``tpr`` (see :func:`fpr_at_tpr_id`).

    Ties at ``t`` count as flagged, seen samples included (pessimistic).

    Args:
        unknown_score: Score per sample, higher = more likely unknown.
        is_unknown: True for unknown (unseen-class) samples.
        tpr: Required true-positive rate, in ``(0, 1]``.
        rule: ``openood``, ``full`` or ``mcm``.

    Returns:
        FPR in ``[0, 1]``; NaN (with a logged warning) when only one of the two groups is present.

    Raises:
        MetricInputError: On non-finite scores, a length mismatch, ``tpr`` outside ``(0, 1]`` or
            an unknown ``rule``.
    """
    tpr = _check_tpr(tpr)
    checked = _fpr_inputs(unknown_score, is_unknown, f"FPR@{tpr:.0%}TPR")
    if checked is None:
        return float("nan")
    score, positive = checked
    return _fpr_at_tpr(score, positive, tpr, rule)


def fpr_at_tpr_id(unknown_score: ArrayLike, is_unknown: ArrayLike, tpr: float = 0.95, rule: str = "mcm") -> float:
    """FPR95 with the **in-distribution** (seen-class) samples as the positive class (MCM, GL-MCM).

    The convention of the MCM and GL-MCM papers (and of most CLIP-based OOD detection work): keep
    the threshold at which a fraction ``tpr`` of the seen-class samples is accepted as
    in-distribution, and report the fraction of unknown samples that are accepted too
    (``score <= t``, ties accepted).

    ``rule`` (:data:`FPR_RULES`), default ``mcm``: the MCM and GL-MCM code
    (``fpr_and_fdr_at_recall`` in ``utils/detection_util.py`` of deeplearning-wisc/MCM, commit
    ea7130f, and AtsuMiyai/GL-MCM, commit 8708a08): among the distinct scores, down to the first
    that accepts every seen sample, the threshold whose recall (TPR) is **closest** to ``tpr``,
    the lowest threshold among equally close ones. It differs from ``full`` (the first threshold
    with recall >= ``tpr``) when a recall just below ``tpr`` is closer than the first one above,
    and in particular when ``tpr`` x the number of seen samples is a whole number and the points
    below and above are equally close.

    :func:`fpr_at_tpr` (``fpr95``, unknown = positive, OpenOOD's convention) and this function
    (``fpr95_id``) generally differ; compare a number only with numbers of the same convention.

    Args:
        unknown_score: Score per sample, higher = more likely unknown.
        is_unknown: True for unknown (unseen-class) samples.
        tpr: Required fraction of seen samples accepted, in ``(0, 1]``.
        rule: ``mcm``, ``full`` or ``openood``.

    Returns:
        FPR in ``[0, 1]``; NaN (with a logged warning) when only one of the two groups is present.

    Raises:
        MetricInputError: On non-finite scores, a length mismatch, ``tpr`` outside ``(0, 1]`` or
            an unknown ``rule``.
    """
    tpr = _check_tpr(tpr)
    checked = _fpr_inputs(unknown_score, is_unknown, f"FPR@{tpr:.0%}TPR (in-distribution positive)")
    if checked is None:
        return float("nan")
    score, positive = checked
    return _fpr_at_tpr(-score, ~positive, tpr, rule)


def roc_curve(unknown_score: ArrayLike, is_unknown: ArrayLike) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full ROC curve of detecting unknowns (no points dropped), for plotting.

    A sample is flagged unknown when ``score >= threshold``. Thresholds are the distinct scores in
    decreasing order, preceded by ``+inf`` (nothing flagged, the point (0, 0)). Matches
    ``sklearn.metrics.roc_curve(is_unknown, unknown_score, drop_intermediate=False)``.

    Args:
        unknown_score: Score per sample, higher = more likely unknown.
        is_unknown: True for unknown (unseen-class) samples.

    Returns:
        ``(fpr, tpr, thresholds)``, three float arrays of equal length. A rate whose group is
        absent from the data is all NaN (with a logged warning).

    Raises:
        MetricInputError: On non-finite scores or a length mismatch.
    """
    score = _scores("unknown_score", unknown_score)
    positive = _is_unknown(is_unknown)
    _same_length(unknown_score=score, is_unknown=positive)
    n_pos = int(positive.sum())
    _warn_undefined(positive.size - n_pos, n_pos, "the ROC curve is")
    return _roc_points(score, positive)


def open_set_predictions(
    closed_pred: ArrayLike, unknown_score: ArrayLike, threshold: float, num_seen: int
) -> np.ndarray:
    """Turn a K-way prediction and an unknown score into a (K+1)-way open-set prediction.

    A sample is predicted unknown (label ``num_seen``) when ``unknown_score >= threshold``
    (inclusive, matching :func:`fpr_at_tpr` and :func:`roc_curve`); otherwise it keeps its
    closed-set label. ``threshold = inf`` never rejects; ``threshold = -inf`` rejects everything.

    Args:
        closed_pred: The classifier's argmax, ``0 .. K-1``.
        unknown_score: Score per sample, higher = more likely unknown.
        threshold: Rejection threshold (not NaN).
        num_seen: K, the number of seen classes.

    Returns:
        int64 array of labels in ``0 .. K``.

    Raises:
        MetricInputError: On labels out of range, non-finite scores, a NaN threshold or a length
            mismatch.
    """
    k = _check_num_seen(num_seen)
    pred = _closed_pred(closed_pred, k)
    score = _scores("unknown_score", unknown_score)
    _same_length(closed_pred=pred, unknown_score=score)
    t = _check_threshold(threshold)
    return np.where(score >= t, k, pred).astype(np.int64)


def confusion_matrix(y_open: ArrayLike, open_pred: ArrayLike, num_seen: int) -> np.ndarray:
    """(K+1)x(K+1) confusion counts; rows = truth, columns = prediction, last index = unknown.

    Args:
        y_open: Open-set ground truth, ``0 .. K``.
        open_pred: Open-set prediction, ``0 .. K``.
        num_seen: K, the number of seen classes.

    Returns:
        int64 array of shape ``(K+1, K+1)``; ``cm[i, j]`` counts samples of class ``i``
        predicted as ``j``. Equals ``sklearn.metrics.confusion_matrix(y_open, open_pred,
        labels=range(K+1))``.

    Raises:
        MetricInputError: On labels out of range or a length mismatch.
    """
    k = _check_num_seen(num_seen)
    y = _y_open(y_open, k)
    pred = _open_pred(open_pred, k)
    _same_length(y_open=y, open_pred=pred)
    return _confusion(y, pred, k)


def _open_inputs(y_open: ArrayLike, open_pred: ArrayLike, num_seen: int) -> Dict[str, float]:
    k = _check_num_seen(num_seen)
    y = _y_open(y_open, k)
    pred = _open_pred(open_pred, k)
    _same_length(y_open=y, open_pred=pred)
    return _open_metrics(y, pred, k)


def open_balanced_accuracy(y_open: ArrayLike, open_pred: ArrayLike, num_seen: int) -> float:
    """Open-set balanced accuracy: mean per-class recall over the K+1 classes present in ``y_open``.

    Classes absent from the ground truth are skipped (their recall is undefined), as in
    ``sklearn.metrics.balanced_accuracy_score``. "Unknown" is one class with the same weight as
    each seen class.

    Args:
        y_open: Open-set ground truth, ``0 .. K``.
        open_pred: Open-set prediction, ``0 .. K``.
        num_seen: K, the number of seen classes.

    Returns:
        The balanced accuracy in ``[0, 1]``.

    Raises:
        MetricInputError: On labels out of range or a length mismatch.
    """
    return _open_inputs(y_open, open_pred, num_seen)["open_bacc"]


def unknown_recall(y_open: ArrayLike, open_pred: ArrayLike, num_seen: int) -> float:
    """Fraction of unknown samples (``y_open == K``) predicted unknown (``open_pred == K``).

    Args:
        y_open: Open-set ground truth, ``0 .. K``.
        open_pred: Open-set prediction, ``0 .. K``.
        num_seen: K, the number of seen classes.

    Returns:
        The recall in ``[0, 1]``; NaN (with a logged warning) when there is no unknown sample.

    Raises:
        MetricInputError: On labels out of range or a length mismatch.
    """
    k = _check_num_seen(num_seen)
    values = _open_inputs(y_open, open_pred, k)
    if math.isnan(values["unknown_recall"]):
        logger.warning("the test set has no unknown (unseen-class) samples: unknown recall undefined, reported as NaN")
    return values["unknown_recall"]


def open_seen_accuracy(y_open: ArrayLike, open_pred: ArrayLike, num_seen: int) -> float:
    """Accuracy of the (K+1)-way prediction on seen-class samples.

    A seen sample counts as correct only when it is given its own class; rejecting it as unknown
    is an error. This is the "seen accuracy" half of :func:`h_score`.

    Args:
        y_open: Open-set ground truth, ``0 .. K``.
        open_pred: Open-set prediction, ``0 .. K``.
        num_seen: K, the number of seen classes.

    Returns:
        The accuracy in ``[0, 1]``; NaN (with a logged warning) when there is no seen sample.

    Raises:
        MetricInputError: On labels out of range or a length mismatch.
    """
    values = _open_inputs(y_open, open_pred, num_seen)
    if math.isnan(values["seen_acc"]):
        logger.warning("the test set has no seen-class samples: seen accuracy undefined, reported as NaN")
    return values["seen_acc"]


def h_score(y_open: ArrayLike, open_pred: ArrayLike, num_seen: int) -> float:
    """H-score: harmonic mean of seen accuracy and unknown recall, both from the open-set prediction.

    ``H = 2 * A_seen * R_unk / (A_seen + R_unk)`` where

    * ``A_seen`` (:func:`open_seen_accuracy`) is the fraction of seen-class samples whose
      (K+1)-way prediction is their true class, so a seen sample wrongly rejected as unknown
      counts against it, and
    * ``R_unk`` (:func:`unknown_recall`) is the fraction of unknown samples predicted unknown.

    Why this definition: it is the H-score of universal/open-set domain adaptation (Fu et al.,
    ECCV 2020; used by OVANet and the open-set SSL benchmarks), and it is the one that rewards
    neither trivial policy: rejecting everything gives ``R_unk = 1`` but ``A_seen = 0``, accepting
    everything the reverse, both ``H = 0``. Using the closed-set accuracy instead of ``A_seen``
    would let a model reject all seen samples for free. ``A_seen`` is sample-averaged (micro),
    matching closed-set top-1 accuracy. ``H = 0`` when both terms are 0.

    Args:
        y_open: Open-set ground truth, ``0 .. K``.
        open_pred: Open-set prediction, ``0 .. K``.
        num_seen: K, the number of seen classes.

    Returns:
        H in ``[0, 1]``; NaN (with a logged warning) when the test set lacks seen or unknown
        samples.

    Raises:
        MetricInputError: On labels out of range or a length mismatch.
    """
    k = _check_num_seen(num_seen)
    y = _y_open(y_open, k)
    values = _open_inputs(y, open_pred, k)
    n_unknown = int((y == k).sum())
    _warn_undefined(y.size - n_unknown, n_unknown, "H-score")
    return values["h_score"]


def macro_f1(y_open: ArrayLike, open_pred: ArrayLike, num_seen: int) -> float:
    """Macro-averaged F1 over the K+1 open-set classes.

    The average runs over every class that occurs in ``y_open`` or ``open_pred`` (as
    ``sklearn.metrics.f1_score(average="macro")`` does); a class in neither has no defined F1 and
    is skipped rather than counted as 0. Per class, ``F1 = 2 TP / (2 TP + FP + FN)``, which is 0
    for a class that is predicted but never true, or true but never predicted.

    Args:
        y_open: Open-set ground truth, ``0 .. K``.
        open_pred: Open-set prediction, ``0 .. K``.
        num_seen: K, the number of seen classes.

    Returns:
        Macro-F1 in ``[0, 1]``.

    Raises:
        MetricInputError: On labels out of range or a length mismatch.
    """
    return _open_inputs(y_open, open_pred, num_seen)["macro_f1"]


def otsu_threshold(scores: ArrayLike) -> float:
    """Data-driven rejection threshold by Otsu's method (as in unified_ossl_benchmarks).

    Splits the scores into a low and a high group maximising the between-group variance
    ``w0 * w1 * (mu0 - mu1) ** 2``. Exact: every gap between consecutive distinct scores is tried
    (no histogram binning), and the threshold is the midpoint of the best gap, so with
    :func:`open_set_predictions` (``score >= threshold`` is unknown) the high group is flagged.
    Ties between equally good gaps go to the lowest.

    Computed on test-set scores it is transductive; compute it on a validation or unlabeled set
    when that matters.

    Args:
        scores: Unknown scores, higher = more likely unknown.

    Returns:
        The threshold. When all scores are equal no split exists: a warning is logged and the
        next float above the common value is returned, so nothing is flagged unknown.

    Raises:
        MetricInputError: On non-finite or empty scores.
    """
    return _otsu(_scores("scores", scores))


def compute_openset_metrics(
    y_open: ArrayLike,
    closed_pred: ArrayLike,
    unknown_score: ArrayLike,
    threshold: Union[float, str],
    num_seen: int,
) -> Dict[str, Union[float, int]]:
    """Every open-set metric of DESIGN.md §4 for one unknown score, in one dictionary.

    Args:
        y_open: Open-set ground truth, ``0 .. K`` (``K`` = unknown).
        closed_pred: The classifier's argmax, ``0 .. K-1``.
        unknown_score: Score per sample, higher = more likely unknown.
        threshold: Rejection threshold (``score >= threshold`` is unknown), or ``"otsu"`` to
            use :func:`otsu_threshold` of ``unknown_score``.
        num_seen: K, the number of seen classes.

    Returns:
        A dict with the keys of :data:`METRIC_KEYS`: ``closed_acc`` (:func:`closed_set_accuracy`),
        ``auroc``, ``fpr95`` (:func:`fpr_at_tpr` at 0.95, unknown = positive, OpenOOD's rule),
        ``fpr95_id`` (:func:`fpr_at_tpr_id` at 0.95, in-distribution = positive, MCM's rule), ``open_bacc``, ``unknown_recall``,
        ``seen_acc`` (:func:`open_seen_accuracy`), ``h_score``, ``macro_f1`` (fractions in ``[0, 1]``, Python floats), ``threshold`` (the
        threshold used, a float) and ``num_test_seen``, ``num_test_unseen`` (Python ints).
        Metrics undefined on this test set are NaN; one warning is logged naming them.

    Raises:
        MetricInputError: On malformed input (see the module docstring).
    """
    k = _check_num_seen(num_seen)
    y = _y_open(y_open, k)
    pred = _closed_pred(closed_pred, k)
    score = _scores("unknown_score", unknown_score)
    _same_length(y_open=y, closed_pred=pred, unknown_score=score)
    if isinstance(threshold, str):
        if threshold.strip().lower() != "otsu":
            raise MetricInputError(f"threshold must be a number or 'otsu', got {threshold!r}")
        t = _otsu(score)
    else:
        t = _check_threshold(threshold)

    unknown = y == k
    n_unseen = int(unknown.sum())
    n_seen = y.size - n_unseen
    seen = ~unknown
    open_pred = np.where(score >= t, k, pred)
    derived = _open_metrics(y, open_pred, k)

    nan = float("nan")
    undefined: List[str] = []
    if n_seen == 0:
        undefined.append("closed_acc")
    if n_seen == 0 or n_unseen == 0:
        undefined += ["auroc", "fpr95", "fpr95_id"]
    if n_unseen == 0:
        undefined.append("unknown_recall")
    if n_seen == 0 or n_unseen == 0:
        undefined.append("h_score")
    if undefined:
        _warn_undefined(n_seen, n_unseen, ", ".join(undefined) + " are")

    both = n_seen > 0 and n_unseen > 0
    return {
        "closed_acc": float(np.mean(pred[seen] == y[seen])) if n_seen else nan,
        "auroc": float(_auroc(score, unknown)) if both else nan,
        "fpr95": _fpr_at_tpr(score, unknown, 0.95, "openood") if both else nan,
        "fpr95_id": _fpr_at_tpr(-score, seen, 0.95, "mcm") if both else nan,
        "open_bacc": derived["open_bacc"],
        "unknown_recall": derived["unknown_recall"],
        "seen_acc": derived["seen_acc"],
        "h_score": derived["h_score"],
        "macro_f1": derived["macro_f1"],
        "threshold": float(t),
        "num_test_seen": int(n_seen),
        "num_test_unseen": int(n_unseen),
    }


__all__ = [
    "FPR_RULES",
    "METRIC_KEYS",
    "MetricInputError",
    "auroc",
    "closed_set_accuracy",
    "compute_openset_metrics",
    "confusion_matrix",
    "fpr_at_tpr",
    "fpr_at_tpr_id",
    "h_score",
    "macro_f1",
    "open_balanced_accuracy",
    "open_seen_accuracy",
    "open_set_predictions",
    "otsu_threshold",
    "roc_curve",
    "unknown_recall",
]
