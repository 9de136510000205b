"""Rejection thresholds of the unknown scores, fitted on **training** data (``threshold_rule``), and the
warning when the K+1-way prediction rejects too many seen images.

Two rules (config key ``threshold_rule``):

* ``labeled_tpr``: per score, the threshold that keeps ``threshold_tpr`` (e.g. 95 %) of the *labeled*
  training images as seen (``score >= t`` is unknown, so at least that share scores below ``t``).
  The one rule every score shares; ``ood_threshold`` is not used. Labeled images are the only
  training images whose class is known to be seen, so the rule states what it costs on seen images.
  The net has fitted them, so seen-class test images usually score a little higher and are kept
  somewhat less often than ``threshold_tpr``.
* ``otsu``: the rule before ``threshold_rule`` existed: a score whose unlabeled training values lie
  in [0, 1] (msp, ova, fused) gets the configured ``ood_threshold``; a ranking score
  (:data:`RANK_ONLY_SCORES`) or a score on another scale (energy) gets Otsu's threshold of its values
  on the *unlabeled* training images. Otsu splits the unlabeled images into two groups whatever
  their mixture; when unknown images are a minority, or the two groups overlap, the high group holds
  many seen images and the K+1-way prediction calls them unknown.

Which rule is the default, and what each gives on the demo: docs/results/calibration.md.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from ..unknown_scores import rank_only_scores
from .metrics import MetricInputError, otsu_threshold

#: The values of ``threshold_rule``.
THRESHOLD_RULES: Tuple[str, ...] = ("labeled_tpr", "otsu")
#: Scores whose values only rank images: MCM and GL-MCM at T = 1 lie in a narrow band just below
#: 1 - 1/K (about [0.80, 0.83] for K = 6), so the probability-like ``ood_threshold`` would flag every
#: image. Like scores outside [0, 1], the ``otsu`` rule gives them Otsu's threshold of their training values.
RANK_ONLY_SCORES = rank_only_scores()
#: The summary warns when the K+1-way seen accuracy is below this share of the closed-set accuracy.
SEEN_ACC_WARN_RATIO = 0.9


def in_unit_interval(score: np.ndarray) -> bool:
    """Whether every value lies in [0, 1]."""
    return bool(np.min(score) >= 0.0 and np.max(score) <= 1.0)


def labeled_tpr_threshold(scores: Any, tpr: float) -> float:
    """The lowest threshold ``t`` from ``scores`` (higher = more unknown) with ``mean(scores < t) >= tpr``.

    Args:
        scores: Unknown scores of images known to be seen (the labeled training images).
        tpr: Share of them to keep as seen, in (0, 1].

    Returns:
        Just above the ``ceil(tpr * n)``-th smallest score, so that image and every lower one are kept.

    Raises:
        MetricInputError: Empty or non-finite scores, or ``tpr`` outside (0, 1].
    """
    arr = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if arr.size == 0:
        raise MetricInputError("labeled_tpr_threshold: no scores (the run has no labeled training images)")
    if not np.all(np.isfinite(arr)):
        raise MetricInputError("labeled_tpr_threshold: scores contain NaN or inf")
    if not 0.0 < float(tpr) <= 1.0:
        raise MetricInputError(f"labeled_tpr_threshold: tpr must be in (0, 1], got {tpr}")
    keep = max(1, int(math.ceil(float(tpr) * arr.size - 1e-9)))
    return float(np.nextafter(arr[keep - 1], np.inf))


def fit_thresholds(
    scores: Mapping[str, np.ndarray],
    threshold: float,
    where: str,
    rule: str = "otsu",
    labeled: Optional[Mapping[str, np.ndarray]] = None,
    tpr: float = 0.95,
    labeled_where: str = "the labeled training images",
) -> Tuple[Dict[str, float], Dict[str, str]]:
    """Rejection threshold per score from **training** scores, and where each came from (module docstring).

    Args:
        scores: Score name -> values on the unlabeled calibration images.
        threshold: The configured ``ood_threshold`` (rule ``otsu``, scores in [0, 1]).
        where: Description of the unlabeled images, for the sources.
        rule: ``labeled_tpr`` or ``otsu`` (:data:`THRESHOLD_RULES`).
        labeled: Score name -> values on the labeled training images (rule ``labeled_tpr``).
        tpr: Share of the labeled images kept as seen (rule ``labeled_tpr``).
        labeled_where: Description of the labeled images, for the sources.

    Returns:
        ``(thresholds, sources)``, both keyed by score name.

    Raises:
        MetricInputError: Unknown rule, or ``labeled_tpr`` without labeled scores for a score.
    """
    if rule not in THRESHOLD_RULES:
        raise MetricInputError(f"threshold_rule {rule!r} is not one of {list(THRESHOLD_RULES)}")
    thresholds: Dict[str, float] = {}
    sources: Dict[str, str] = {}
    for name, values in scores.items():
        arr = np.asarray(values, dtype=np.float64)
        if rule == "labeled_tpr":
            if labeled is None or name not in labeled:
                raise MetricInputError(f"threshold_rule labeled_tpr: no scores of labeled images for {name!r}")
            thresholds[name] = labeled_tpr_threshold(labeled[name], tpr)
            sources[name] = f"labeled_tpr: keeps {100 * tpr:g}% of {labeled_where} as seen"
        elif name in RANK_ONLY_SCORES:
            thresholds[name] = otsu_threshold(arr)
            sources[name] = f"Otsu on {where} ({name} is a ranking score: no fixed cut is meaningful)"
        elif in_unit_interval(arr):
            thresholds[name] = float(threshold)
            sources[name] = f"ood_threshold (config); the score lies in [0, 1] on {where}"
        else:
            thresholds[name] = otsu_threshold(arr)
            sources[name] = f"Otsu on {where} (the score is not in [0, 1])"
    return thresholds, sources


def seen_accuracy_warning(
    seen_acc: float,
    closed_acc: float,
    seen_rejected: float,
    score: str,
    threshold_source: str,
    rule: Optional[str],
) -> Optional[str]:
    """Why the K+1-way prediction loses seen images, when its seen accuracy is below
    :data:`SEEN_ACC_WARN_RATIO` x the closed-set accuracy; None otherwise (or when undefined).

    Args:
        seen_acc: Accuracy of the seen-class test images in the K+1-way prediction.
        closed_acc: Closed-set accuracy of the same images.
        seen_rejected: Share of the seen-class test images the threshold calls unknown.
        score: The score thresholded.
        threshold_source: Where its threshold came from.
        rule: The calibration's ``threshold_rule`` (None: no calibration).
    """
    if not (math.isfinite(seen_acc) and math.isfinite(closed_acc)) or seen_acc >= SEEN_ACC_WARN_RATIO * closed_acc:
        return None
    head = (
        f"K+1 seen accuracy {100 * seen_acc:.1f}% is below {SEEN_ACC_WARN_RATIO:g} x the closed-set accuracy "
        f"{100 * closed_acc:.1f}%: the {score} threshold ({threshold_source}) calls {100 * seen_rejected:.1f}% "
        f"of the seen-class test images unknown"
    )
    if rule == "labeled_tpr":
        return (
            head + "; the seen-class test images score higher than the labeled training images the threshold "
            "kept (the net fits its labeled images): raise threshold_tpr to keep more of them"
        )
    return (
        head + "; threshold_rule labeled_tpr (a threshold keeping threshold_tpr of the labeled training images "
        "as seen) rejects fewer seen images"
    )


__all__ = [
    "RANK_ONLY_SCORES",
    "SEEN_ACC_WARN_RATIO",
    "THRESHOLD_RULES",
    "fit_thresholds",
    "in_unit_interval",
    "labeled_tpr_threshold",
    "seen_accuracy_warning",
]
