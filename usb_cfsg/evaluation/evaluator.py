"""Open-set evaluation of a trained algorithm: calibration, metrics for every unknown score, files, logs, hook.

**Calibration, on training data only.** :func:`calibrate` runs the evaluated weights over at most
:data:`CALIBRATION_MAX_IMAGES` unlabeled *training* images (evenly spaced over the unlabeled set,
with the evaluation transform; their labels are never read) and fits, per unknown score,

* a range ``[lo, hi]``: the 1 % and 99 % quantiles (:data:`CALIBRATION_QUANTILES`,
  :func:`~usb_cfsg.modules.scores.fit_score_range`) of the raw score, which algorithms use to bring
  scores onto one scale before fusing them (cfsg_clip's ``fused``);
* a rejection threshold by ``threshold_rule`` (:mod:`.thresholds`): ``labeled_tpr``, the threshold
  keeping ``threshold_tpr`` of the *labeled* training images (``train_lb_eval``) as seen; or ``otsu``,
  the configured ``ood_threshold`` for a score whose training values lie in [0, 1] (msp, ova, fused)
  and Otsu's threshold of the unlabeled training values for the others (energy, mcm, glmcm).

The result, ``{"ranges", "thresholds", "threshold_sources", "source", "num_images", "num_available",
"quantiles", "threshold_rule", "threshold_tpr", "num_labeled"}`` (contract C1), is passed to
``algorithm.unknown_scores(outputs, calibration)``,
stored in ``latest_model.pth`` and written to ``openset_metrics.json``. Nothing from the test set
enters a range or a threshold.

:func:`evaluate_openset` runs ``algorithm.predict_loader("test_open")`` (all test images, unseen
classes labelled K; the EMA weights, as USB evaluates), takes the closed-set prediction as the
argmax of ``logits`` and the unknown scores from ``algorithm.unknown_scores(outputs, calibration)``
(the algorithm decides which scores exist and which is the headline one; every score is higher =
more unknown), and computes :func:`~usb_cfsg.evaluation.metrics.compute_openset_metrics` for each
score at its calibrated threshold. With the Semantic Shift Benchmark split (``class_split: ssb``) it
also reports AUROC, both FPR95 conventions and unknown recall per difficulty group (seen-class
test images against the unknown images of one group). Rank 0 writes, into the run folder by
default:

* ``openset_metrics.json`` -- strict JSON (NaN written as ``null``), schema :data:`JSON_KEYS`;
* ``roc.png`` (every score), ``score_hist.png`` (primary score, seen vs unseen, threshold line),
  ``open_scores.npz`` (per image: ``y_open``, ``closed_pred``, ``score_<name>`` of every score);
* ``confusion.csv`` -- (K+1)x(K+1) open-set confusion matrix of the primary score.

:class:`OpenSetEvalHook` does this once at the end of training, after USB's EvaluationHook has
saved ``latest_model.pth``, and stores the calibration in that file (re-saved atomically). During
training, at every USB evaluation (``num_eval_iter``), it also evaluates the headline score on the
open-set test set (with ``eval_subset``: on its fixed, class-stratified subset, as USB's ``eval/*``
then are; the end of training always evaluates all test images) and logs ``test_open/auroc``, ``test_open/fpr95`` and ``test_open/unknown_recall``
(log line and TensorBoard curves); that costs one pass over the open-set test set plus one over
:data:`CALIBRATION_MAX_IMAGES_TRAINING` unlabeled training images per evaluation. At the end it
evaluates the **final** EMA weights -- exactly those stored as
``ema_model`` in ``latest_model.pth``, whose path the JSON records -- not ``model_best.pth``:
USB picks its best model on ``eval/top-1-acc``, which is measured on the seen-class test images,
i.e. on part of the open-set test set; reporting the best model would select on the test set.
``eval.py`` on ``latest_model.pth`` uses the stored calibration and reproduces the numbers
exactly; on a checkpoint without one (``model_best.pth``, older runs) it fits the calibration on
the training data the same way.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from semilearn.core.hooks import Hook

from ..datasets.build import CALIBRATION_MAX_IMAGES, CALIBRATION_SET, LABELED_CALIBRATION_SET, calibration_indices
from ..errors import UsbCfsgError
from .metrics import MetricInputError, compute_openset_metrics, confusion_matrix, open_set_predictions
from .plots import _atomic_path, save_roc, save_score_hist, write_confusion_csv
from .report import format_summary, short_path
from .thresholds import fit_thresholds, in_unit_interval, seen_accuracy_warning

logger = logging.getLogger("usb_cfsg")

#: Headline metrics (of the primary score) in openset_metrics.json, TensorBoard and results.
HEADLINE_KEYS: Tuple[str, ...] = (
    "closed_acc",
    "auroc",
    "fpr95",
    "fpr95_id",
    "open_bacc",
    "unknown_recall",
    "seen_acc",
    "h_score",
    "macro_f1",
)
#: Per-score metrics under ``"scores"`` in openset_metrics.json (numbers; NaN written as null).
SCORE_KEYS: Tuple[str, ...] = (
    "auroc",
    "fpr95",
    "fpr95_id",
    "open_bacc",
    "unknown_recall",
    "seen_acc",
    "h_score",
    "macro_f1",
    "threshold",
)
#: Per-difficulty metrics (``class_split: ssb``): seen-class test images against one group's unknowns.
DIFFICULTY_KEYS: Tuple[str, ...] = ("num_test_unseen", "auroc", "fpr95", "fpr95_id", "unknown_recall")
#: Top-level keys of openset_metrics.json, in file order.
JSON_KEYS: Tuple[str, ...] = (
    "algorithm",
    "dataset",
    "num_seen",
    "num_test_seen",
    "num_test_unseen",
    "primary_score",
    *HEADLINE_KEYS,
    "threshold",
    "threshold_source",
    "warning",
    "difficulty",
    "localization",
    "scores",
    "calibration",
    "checkpoint",
    "demo_clip_sha256",
)
#: Most unlabeled training images the calibration uses at each evaluation during training.
CALIBRATION_MAX_IMAGES_TRAINING = 500
#: Quantiles of a score's training values that make its range.
CALIBRATION_QUANTILES: Tuple[float, float] = (0.01, 0.99)
#: Headline metrics logged at every evaluation during training (``test_open/<key>`` curves).
CURVE_KEYS: Tuple[str, ...] = ("auroc", "fpr95", "unknown_recall")
METRICS_FILE = "openset_metrics.json"
ROC_FILE = "roc.png"
SCORES_FILE = "open_scores.npz"
HIST_FILE = "score_hist.png"
CONFUSION_FILE = "confusion.csv"
#: Hook priority: after USB's EvaluationHook (HIGH = 30), before its LOWEST logging hooks.
OPENSET_HOOK_PRIORITY = "VERY_LOW"
#: Prefix of TensorBoard scalars and results_dict entries.
TB_PREFIX = "test_open/"
_IN_TITLE = ("algorithm", "dataset", "primary_score", "num_seen")


class EvaluationError(UsbCfsgError, RuntimeError):
    """The open-set evaluation cannot run (missing loader, malformed scores, ...)."""


def _validated_scores(scores: Mapping[str, Any], primary: str, n: int, source: str) -> Dict[str, np.ndarray]:
    if not isinstance(scores, Mapping) or not scores:
        raise EvaluationError(f"{source} returned no scores ({scores!r}); expected {{name: array [N]}}")
    if primary not in scores:
        raise EvaluationError(
            f"{source} names primary score {primary!r}, which is not among its scores {sorted(scores)}"
        )
    out = {}
    for name, values in scores.items():
        arr = np.asarray(values, dtype=np.float64)
        if arr.shape != (n,):
            raise EvaluationError(
                f"{source}: score {name!r} has shape {arr.shape}, expected ({n},), one value per test image"
            )
        out[str(name)] = arr
    return out


def fit_calibration(
    outputs: Mapping[str, np.ndarray],
    score_fn: Callable[..., Tuple[Dict[str, np.ndarray], str]],
    threshold: float,
    source: str,
    quantiles: Tuple[float, float] = CALIBRATION_QUANTILES,
    rule: str = "otsu",
    labeled_outputs: Optional[Mapping[str, np.ndarray]] = None,
    tpr: float = 0.95,
    labeled_source: str = "the labeled training images",
) -> Dict[str, Any]:
    """Fit score ranges and thresholds on net outputs of **training** images (contract C1).

    Args:
        outputs: Net outputs on the unlabeled calibration images (no labels), as :meth:`predict_loader`
            gives them.
        score_fn: ``score_fn(outputs, calibration) -> (scores, primary)``, e.g. ``algorithm.unknown_scores``.
        threshold: The configured ``ood_threshold``.
        source: What the images are (recorded as ``calibration["source"]``).
        quantiles: Quantiles of each raw score that make its range.
        rule: ``threshold_rule`` (:mod:`.thresholds`): ``labeled_tpr`` or ``otsu``.
        labeled_outputs: Net outputs on the labeled training images (rule ``labeled_tpr``; their labels
            are not needed: they are all seen).
        tpr: ``threshold_tpr``, the share of the labeled images kept as seen.
        labeled_source: What the labeled images are, for the thresholds' sources.

    Returns:
        ``{"ranges": {score: [lo, hi]}, "thresholds": {score: t}, "threshold_sources": {score: str},
        "source": str, "num_images": int, "quantiles": [q_lo, q_hi], "threshold_rule": str,
        "threshold_tpr": float | None, "num_labeled": int}``. Ranges are fitted on the uncalibrated
        unlabeled scores; thresholds on the scores computed with those ranges (what is evaluated).

    Raises:
        EvaluationError: No outputs, malformed scores, or ``labeled_tpr`` without labeled outputs.
    """
    import torch

    from ..modules.scores import fit_score_range

    n = int(np.asarray(outputs["logits"]).shape[0]) if "logits" in outputs else 0
    if n == 0:
        raise EvaluationError("no calibration images: the calibration needs unlabeled training images")
    n_lb = int(np.asarray(labeled_outputs["logits"]).shape[0]) if labeled_outputs and "logits" in labeled_outputs else 0
    if rule == "labeled_tpr" and n_lb == 0:
        raise EvaluationError(
            "threshold_rule labeled_tpr needs the labeled training images' outputs, got none; use threshold_rule otsu"
        )
    raw, primary = score_fn(dict(outputs), None)
    raw = _validated_scores(raw, primary, n, "unknown_scores (calibration)")
    ranges = {name: [float(v) for v in fit_score_range(torch.as_tensor(arr), quantiles)] for name, arr in raw.items()}
    calibration: Dict[str, Any] = {
        "ranges": ranges,
        "thresholds": {},
        "threshold_sources": {},
        "source": source,
        "num_images": n,
        "quantiles": [float(q) for q in quantiles],
        "threshold_rule": rule,
        "threshold_tpr": float(tpr) if rule == "labeled_tpr" else None,
        "num_labeled": n_lb if rule == "labeled_tpr" else 0,
    }
    calibrated, primary = score_fn(dict(outputs), calibration)
    calibrated = _validated_scores(calibrated, primary, n, "unknown_scores (calibration)")
    labeled = None
    if rule == "labeled_tpr" and labeled_outputs is not None:
        labeled, _ = score_fn(dict(labeled_outputs), calibration)
        labeled = _validated_scores(labeled, primary, n_lb, "unknown_scores (labeled calibration images)")
    try:
        thresholds, sources = fit_thresholds(
            calibrated, threshold, f"{n} unlabeled training images", rule, labeled, tpr, labeled_source
        )
    except MetricInputError as exc:
        raise EvaluationError(f"calibration: {exc}") from None
    calibration["thresholds"] = thresholds
    calibration["threshold_sources"] = sources
    return calibration


def _predict_subset(algorithm: Any, dataset: Any, indices: np.ndarray) -> Dict[str, np.ndarray]:
    """Net outputs (``predict_loader``, EMA weights) on ``dataset[indices]``, without the labels."""
    from torch.utils.data import Subset

    from ..engine.sampling import eval_loader

    args = algorithm.args
    pin = getattr(getattr(algorithm, "device", None), "type", "cpu") == "cuda"
    loader = eval_loader(
        Subset(dataset, indices.tolist()), int(args.eval_batch_size), int(getattr(args, "num_workers", 0) or 0), pin
    )
    key = "_calibration"
    algorithm.loader_dict[key] = loader
    try:
        outputs = algorithm.predict_loader(key)
    finally:
        algorithm.loader_dict.pop(key, None)
    outputs.pop("y", None)  # calibration images' labels are never used
    return outputs


def calibrate(algorithm: Any, max_images: int = CALIBRATION_MAX_IMAGES) -> Optional[Dict[str, Any]]:
    """Fit the calibration of ``algorithm``'s current (EMA) weights on training images.

    Uses ``algorithm.dataset_dict["train_ulb_eval"]`` (at most :data:`CALIBRATION_MAX_IMAGES`
    unlabeled images, evenly spaced, with the evaluation transform), at most ``max_images`` of
    them spread evenly over it, so the same run gives the same images; with ``threshold_rule:
    labeled_tpr`` also at most ``max_images`` labeled images (``train_lb_eval``, evaluation
    transform), whose scores give the thresholds (without any: rule ``otsu``, with a warning).
    Returns None (with a warning) when the run has no unlabeled training images.
    """
    data = getattr(algorithm, "dataset_dict", None) or {}
    dataset = data.get(CALIBRATION_SET)
    if dataset is None or len(dataset) == 0:
        logger.warning(
            "no unlabeled training images to calibrate the unknown scores on: score ranges are not "
            "fitted and scores outside [0, 1] get no threshold"
        )
        return None
    args = algorithm.args
    rule = str(getattr(args, "threshold_rule", "otsu") or "otsu")
    tpr = float(getattr(args, "threshold_tpr", 0.95))
    indices = calibration_indices(len(dataset), int(max_images))
    unlabeled = data.get("train_ulb")
    available = len(unlabeled) if unlabeled is not None else len(dataset)
    outputs = _predict_subset(algorithm, dataset, indices)
    labeled_outputs, labeled_source = None, ""
    if rule == "labeled_tpr":
        labeled_set = data.get(LABELED_CALIBRATION_SET)
        if labeled_set is None or len(labeled_set) == 0:  # never fail the end of a training run over it
            logger.warning(
                "threshold_rule labeled_tpr: the run has no labeled training images with the evaluation transform "
                "(%r): thresholds by threshold_rule otsu instead",
                LABELED_CALIBRATION_SET,
            )
            rule = "otsu"
        else:
            lb_indices = calibration_indices(len(labeled_set), int(max_images))
            labeled_outputs = _predict_subset(algorithm, labeled_set, lb_indices)
            labeled_source = f"{len(lb_indices)} labeled training images"
    source = (
        f"{len(indices)} of {available} unlabeled training images (train_ulb, evaluation transform, evenly "
        f"spaced), EMA weights at iteration {iterations_done(algorithm)}"
    )
    calibration = fit_calibration(
        outputs,
        algorithm.unknown_scores,
        float(args.ood_threshold),
        source,
        rule=rule,
        labeled_outputs=labeled_outputs,
        tpr=tpr,
        labeled_source=labeled_source,
    )
    calibration["num_available"] = int(available)
    return calibration


def _threshold_for(
    name: str, arr: np.ndarray, threshold: Any, calibration: Optional[Mapping[str, Any]]
) -> Tuple[Optional[float], str]:
    """The threshold of one score and its source; None when none may be used."""
    if isinstance(threshold, str):
        raise EvaluationError(
            f"threshold {threshold!r}: a threshold fitted on the test scores is not allowed; "
            f"thresholds come from ood_threshold or the calibration on training data"
        )
    fitted = (calibration or {}).get("thresholds") or {}
    if name in fitted:
        sources = (calibration or {}).get("threshold_sources") or {}
        return float(fitted[name]), str(sources.get(name, (calibration or {}).get("source", "calibration")))
    if in_unit_interval(arr):
        return float(threshold), "ood_threshold (config), no calibration on training data"
    logger.warning(
        "score %r is not in [0, 1] and has no threshold fitted on training data: its threshold-based "
        "metrics are reported as NaN (calibrate on the unlabeled training set)",
        name,
    )
    return None, "none: the score is not in [0, 1] and was not calibrated on training data"


def _score_metrics(
    y: np.ndarray, closed_pred: np.ndarray, arr: np.ndarray, t: Optional[float], k: int
) -> Dict[str, Any]:
    if t is not None:
        return compute_openset_metrics(y, closed_pred, arr, t, k)
    out = compute_openset_metrics(y, closed_pred, arr, float("inf"), k)
    for key in ("open_bacc", "unknown_recall", "h_score", "macro_f1", "threshold"):
        out[key] = float("nan")
    return out


def difficulty_metrics(
    y_open: np.ndarray,
    closed_pred: np.ndarray,
    score: np.ndarray,
    threshold: Optional[float],
    num_seen: int,
    difficulty: Sequence[str],
) -> Dict[str, Dict[str, Any]]:
    """Metrics per unknown-class difficulty group: all seen-class images against one group's unknowns.

    Args:
        y_open: Labels ``0..K`` (``K`` = unknown).
        closed_pred: Closed-set predictions.
        score: One unknown score [N].
        threshold: Its threshold (None: unknown recall is NaN).
        num_seen: K.
        difficulty: Per image its group (``"Easy"``, ``"Medium"``, ``"Hard"``; ``""`` for seen images).

    Returns:
        ``{group: {<DIFFICULTY_KEYS>}}`` for the groups present, easiest first.
    """
    from ..datasets.ssb import DIFFICULTIES

    groups = np.asarray([str(d) for d in difficulty])
    unknown = y_open == num_seen
    present = sorted(
        {str(g) for g in groups[unknown]} - {""},
        key=lambda g: (DIFFICULTIES.index(g) if g in DIFFICULTIES else len(DIFFICULTIES), g),
    )
    out: Dict[str, Dict[str, Any]] = {}
    for group in present:
        mask = ~unknown | (groups == group)
        m = _score_metrics(y_open[mask], closed_pred[mask], score[mask], threshold, num_seen)
        out[group] = {key: m[key] for key in DIFFICULTY_KEYS}
    return out


def openset_metrics_from_outputs(
    y_open: np.ndarray,
    logits: np.ndarray,
    scores: Mapping[str, Any],
    primary: str,
    num_seen: int,
    threshold: Any,
    calibration: Optional[Mapping[str, Any]] = None,
    difficulty: Optional[Sequence[str]] = None,
) -> Dict[str, Any]:
    """Headline and per-score open-set metrics from per-sample arrays.

    Args:
        y_open: Labels ``0..K`` (``K`` = unknown), shape [N].
        logits: Closed-set logits [N, K]; the closed-set prediction is their argmax.
        scores: Score name -> unknown score [N] (higher = more unknown).
        primary: The headline score's name.
        num_seen: K.
        threshold: The configured ``ood_threshold`` (``score >= threshold`` is unknown), used for
            scores the calibration has no threshold for when they lie in [0, 1].
        calibration: What :func:`fit_calibration` fitted on training data; its ``thresholds`` win.
            A score outside [0, 1] without a calibrated threshold gets NaN threshold-based metrics:
            no threshold is ever fitted on these (test) scores.
        difficulty: Optional per-image difficulty group (``""`` for seen images), see
            :func:`difficulty_metrics`.

    Returns:
        ``{"num_test_seen", "num_test_unseen", "primary_score", <HEADLINE_KEYS>, "threshold",
        "threshold_source", "warning", "difficulty", "scores": {name: {<SCORE_KEYS>, "threshold_source",
        "difficulty"}}}``; undefined metrics are NaN, ``difficulty`` None without groups; ``warning``
        (None when all is well) says why the primary score's threshold makes the K+1-way seen accuracy
        fall below 0.9 x the closed-set accuracy (:func:`~.thresholds.seen_accuracy_warning`).

    Raises:
        EvaluationError: Malformed scores. MetricInputError: malformed labels or non-finite scores.
    """
    y = np.asarray(y_open)
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[0] != y.shape[0] or logits.shape[1] != num_seen:
        raise EvaluationError(f"logits have shape {logits.shape}, expected ({y.shape[0]}, {num_seen})")
    closed_pred = logits.argmax(axis=1)
    checked = _validated_scores(scores, primary, y.shape[0], "unknown_scores")
    if difficulty is not None and len(difficulty) != y.shape[0]:
        raise EvaluationError(f"difficulty has {len(difficulty)} entries, expected {y.shape[0]} (one per test image)")
    per_score: Dict[str, Dict[str, Any]] = {}
    for name, arr in checked.items():
        t, source = _threshold_for(name, arr, threshold, calibration)
        try:
            m = _score_metrics(y, closed_pred, arr, t, num_seen)
            m["threshold_source"] = source
            m["difficulty"] = (
                difficulty_metrics(y, closed_pred, arr, t, num_seen, difficulty) if difficulty is not None else None
            )
        except MetricInputError as exc:
            raise MetricInputError(f"score {name!r}: {exc}") from None
        per_score[name] = m
    head = per_score[primary]
    result: Dict[str, Any] = {
        "num_test_seen": head["num_test_seen"],
        "num_test_unseen": head["num_test_unseen"],
        "primary_score": primary,
    }
    result.update({k: head[k] for k in HEADLINE_KEYS})
    result["threshold"] = head["threshold"]
    result["threshold_source"] = head["threshold_source"]
    seen = y < num_seen
    t = float(head["threshold"])
    rejected = float(np.mean(checked[primary][seen] >= t)) if seen.any() and math.isfinite(t) else 0.0
    result["warning"] = seen_accuracy_warning(
        float(head["seen_acc"]),
        float(head["closed_acc"]),
        rejected,
        primary,
        str(head["threshold_source"]),
        (calibration or {}).get("threshold_rule"),
    )
    result["difficulty"] = head["difficulty"] or None
    result["scores"] = {
        name: {
            **{k: m[k] for k in SCORE_KEYS},
            "threshold_source": m["threshold_source"],
            **({"difficulty": m["difficulty"]} if m["difficulty"] else {}),
        }
        for name, m in per_score.items()
    }
    return result


def _json_safe(value: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python, recursively (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def write_metrics_json(path: str, metrics: Mapping[str, Any]) -> str:
    """Write metrics as strict JSON (NaN as null), atomically; returns ``path``."""
    text = json.dumps(_json_safe(metrics), indent=2, allow_nan=False) + "\n"
    with _atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
    return path


def write_scores_npz(path: str, y_open: np.ndarray, logits: np.ndarray, scores: Mapping[str, np.ndarray]) -> str:
    """Per-image results of the open-set test set, atomically: ``y_open``, ``closed_pred`` and ``score_<name>``.

    What a comparison needs to redraw ROC curves or re-derive any metric without re-running the model
    (``python -m usb_cfsg_tools.compare`` reads it); float32, a few hundred KB for 10,000 images.
    """
    arrays = {
        "y_open": np.asarray(y_open, dtype=np.int64),
        "closed_pred": np.asarray(logits).argmax(axis=1).astype(np.int64),
        **{f"score_{name}": np.asarray(v, dtype=np.float32) for name, v in scores.items()},
    }
    with _atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return path


def write_openset_files(
    out_dir: str,
    record: Mapping[str, Any],
    y_open: np.ndarray,
    logits: np.ndarray,
    scores: Mapping[str, np.ndarray],
    class_names: List[str],
) -> Dict[str, str]:
    """Write openset_metrics.json, roc.png, score_hist.png and confusion.csv into ``out_dir``.

    Returns:
        File kind -> path.
    """
    os.makedirs(out_dir, exist_ok=True)
    k = int(record["num_seen"])
    primary = record["primary_score"]
    threshold = float(record["threshold"])
    has_threshold = math.isfinite(threshold)
    is_unknown = np.asarray(y_open) == k
    # without a threshold (an uncalibrated score outside [0, 1]) nothing is rejected in confusion.csv
    open_pred = open_set_predictions(
        np.asarray(logits).argmax(axis=1), scores[primary], threshold if has_threshold else float("inf"), k
    )
    files = {
        "roc": save_roc(
            os.path.join(out_dir, ROC_FILE),
            scores,
            is_unknown,
            title=f"Unknown detection ROC: {record['algorithm']} on {record['dataset']}",
        ),
        "score_hist": save_score_hist(
            os.path.join(out_dir, HIST_FILE),
            scores[primary],
            is_unknown,
            primary,
            threshold=threshold if has_threshold else None,
        ),
        "confusion": write_confusion_csv(
            os.path.join(out_dir, CONFUSION_FILE), confusion_matrix(y_open, open_pred, k), class_names
        ),
        "scores": write_scores_npz(os.path.join(out_dir, SCORES_FILE), y_open, logits, scores),
    }
    # the JSON last: its presence means the evaluation finished
    files["metrics"] = write_metrics_json(os.path.join(out_dir, METRICS_FILE), record)
    return files


def iterations_done(algorithm: Any) -> int:
    """Training iterations done (the 1-based number of the last one; the TensorBoard step of its logs).

    During a step USB's ``it`` is the step's 0-based index and ``completed_iters`` already counts the
    step; after the run (and in eval.py, where ``it`` is the checkpoint's count) both are the same.
    """
    return int(getattr(algorithm, "completed_iters", getattr(algorithm, "it", 0)) or 0)


def _run_dir(args) -> str:
    return os.path.join(args.save_dir, args.save_name)


def _tb_scalars(record: Mapping[str, Any]) -> Dict[str, float]:
    from .localization import localization_scalars

    scalars = {f"{TB_PREFIX}{k}": record[k] for k in HEADLINE_KEYS}
    scalars.update(localization_scalars(record.get("localization"), TB_PREFIX))
    for name, values in record["scores"].items():
        scalars.update({f"{TB_PREFIX}{name}/{k}": values[k] for k in SCORE_KEYS})
    for group, values in (record.get("difficulty") or {}).items():
        scalars.update({f"{TB_PREFIX}{group}/{k}": values[k] for k in DIFFICULTY_KEYS if k != "num_test_unseen"})
    return {k: float(v) for k, v in scalars.items() if v is not None and math.isfinite(float(v))}


def _difficulty(algorithm: Any, dest: str, n: int) -> Optional[List[str]]:
    """Per-image unknown difficulty of the open-set test set (class_split: ssb), else None."""
    info = getattr(algorithm, "openset_info", None)
    groups = getattr(info, "test_difficulty", None) if dest == "test_open" else None
    if groups is None:
        return None
    if len(groups) != n:
        raise EvaluationError(f"the split records {len(groups)} test-image difficulties but {dest!r} has {n} images")
    return list(groups)


def _localization(
    algorithm: Any, dest: str, outputs: Mapping[str, np.ndarray], y: np.ndarray
) -> Optional[Dict[str, Any]]:
    """Localization metrics (:mod:`.localization`) when the images carry boxes and the net a patch map."""
    info = getattr(algorithm, "openset_info", None)
    boxes = getattr(info, "test_boxes", None) if dest == "test_open" else None
    if boxes is None or "relevance" not in outputs:
        return None
    from .localization import DEFAULT_KEEP_RATIO, localization_metrics

    args = algorithm.args
    if len(boxes) != len(y):
        raise EvaluationError(f"the split records {len(boxes)} test-image boxes but {dest!r} has {len(y)} images")
    keep_ratio = getattr(args, "sfm_keep_ratio", None) or DEFAULT_KEEP_RATIO
    return localization_metrics(
        outputs["relevance"],
        boxes,
        int(args.img_size),
        float(args.crop_ratio),
        keep_idx=outputs.get("keep_idx"),
        keep_ratio=float(keep_ratio),
        unknown=np.asarray(y) == int(algorithm.num_classes),
        map_name=str(getattr(algorithm, "relevance_map", "the net's relevance output")),
    )


def evaluate_openset(
    algorithm: Any,
    dest: str = "test_open",
    out_dir: Optional[str] = None,
    checkpoint: Optional[str] = None,
    calibration: Optional[Mapping[str, Any]] = None,
    show: Optional[Callable[[str], None]] = None,
) -> Dict[str, Any]:
    """Evaluate ``algorithm`` on the open-set test loader and write the report (rank 0).

    Args:
        algorithm: A built algorithm with :class:`~usb_cfsg.engine.plugin.PluginMixin` (``predict_loader``,
            ``unknown_scores``, ``openset_info``, ``args``, ``dataset_dict``).
        dest: Loader key; ``test_open`` = all test images, unseen classes labelled K.
        out_dir: Where to write; default the run folder ``<save_dir>/<save_name>/``.
        checkpoint: Path of the checkpoint holding the evaluated weights, recorded in the JSON.
        calibration: The calibration to use (e.g. the one stored in the checkpoint); None fits it
            now with :func:`calibrate` on the unlabeled training images.
        show: Where the summary and the path of the JSON go (eval.py: stdout); default the
            algorithm's ``print_fn`` (the run's log).

    Returns:
        The record written to openset_metrics.json (keys :data:`JSON_KEYS`), NaN where undefined.

    Raises:
        EvaluationError: No such loader, or malformed scores from the algorithm.
        MetricInputError: Labels out of range or non-finite scores.
    """
    args = algorithm.args
    loaders = getattr(algorithm, "loader_dict", None) or {}
    if dest not in loaders:
        raise EvaluationError(
            f"no {dest!r} loader to evaluate (loaders: {sorted(loaders)}); the dataset must "
            f"provide the open-set test split"
        )
    k = int(algorithm.num_classes)
    if calibration is None:
        calibration = calibrate(algorithm)
    outputs = algorithm.predict_loader(dest)
    y = np.asarray(outputs["y"])
    if "logits" not in outputs:
        raise EvaluationError(f"the net returned no 'logits' (outputs: {sorted(outputs)})")
    net_outputs = {key: value for key, value in outputs.items() if key != "y"}
    scores, primary = algorithm.unknown_scores(net_outputs, calibration=calibration)
    scores = _validated_scores(scores, primary, y.shape[0], f"{type(algorithm).__name__}.unknown_scores")
    metrics = openset_metrics_from_outputs(
        y,
        outputs["logits"],
        scores,
        primary,
        k,
        args.ood_threshold,
        calibration=calibration,
        difficulty=_difficulty(algorithm, dest, y.shape[0]),
    )

    info = getattr(algorithm, "openset_info", None)
    record: Dict[str, Any] = {
        "algorithm": str(args.algorithm),
        "dataset": str(info.dataset if info is not None else args.dataset),
        "num_seen": k,
    }
    record.update(metrics)
    record["localization"] = _localization(algorithm, dest, net_outputs, y)
    record["calibration"] = dict(calibration) if calibration is not None else None
    record["checkpoint"] = checkpoint
    # the demo CLIP build the weights come from (None: no demo CLIP); compare refuses to mix builds
    record["demo_clip_sha256"] = getattr(args, "demo_clip_sha256", None)
    record = {key: record[key] for key in JSON_KEYS}

    title = f"Open-set evaluation: {record['algorithm']} on {record['dataset']} ({dest}, primary score {primary})"
    if int(getattr(args, "rank", 0) or 0) == 0:
        target = out_dir or _run_dir(args)
        class_names = list(info.seen_class_names) if info is not None else [f"class {i}" for i in range(k)]
        files = write_openset_files(target, record, y, outputs["logits"], scores, class_names)
        tb_log = getattr(algorithm, "tb_log", None)
        if tb_log is not None:
            # the final evaluation's point of every test_open/* curve: the step of the last iteration,
            # which OpenSetEvalHook.after_train_step leaves to it (one point per step and tag)
            tb_log.update(_tb_scalars(record), iterations_done(algorithm))
        print_fn: Callable[[str], Any] = show if show is not None else getattr(algorithm, "print_fn", logger.info)
        shown = {key: value for key, value in record.items() if key not in _IN_TITLE}
        print_fn(format_summary(shown, title=title))
        print_fn(f"open-set metrics written to {short_path(files['metrics'])}")
    return record


def openset_curve_point(
    algorithm: Any, max_images: int = CALIBRATION_MAX_IMAGES_TRAINING
) -> Tuple[Dict[str, float], str]:
    """The headline score's :data:`CURVE_KEYS` on ``test_open`` now, keyed ``test_open/<key>``, and its name.

    With ``eval_subset`` set, on the fixed class-stratified subset of the open-set test set
    (``algorithm.training_eval_loader("test_open")``); otherwise on all of it. Calibrated on at most ``max_images`` unlabeled training images (cheaper than the final
    evaluation's :data:`CALIBRATION_MAX_IMAGES`). Writes no file.
    """
    calibration = calibrate(algorithm, max_images)
    training_loader = getattr(algorithm, "training_eval_loader", None)
    outputs = algorithm.predict_loader(training_loader("test_open") if training_loader is not None else "test_open")
    y = np.asarray(outputs.pop("y"))
    scores, primary = algorithm.unknown_scores(outputs, calibration=calibration)
    metrics = openset_metrics_from_outputs(
        y,
        outputs["logits"],
        {primary: scores[primary]},
        primary,
        int(algorithm.num_classes),
        algorithm.args.ood_threshold,
        calibration=calibration,
    )
    return {f"{TB_PREFIX}{key}": float(metrics[key]) for key in CURVE_KEYS}, primary


def store_calibration(path: str, calibration: Optional[Mapping[str, Any]]) -> None:
    """Re-save the checkpoint at ``path`` atomically with ``calibration`` added (plain types only)."""
    from ..engine.checkpoint import atomic_save, safe_load

    ckpt = safe_load(path)
    ckpt["calibration"] = json.loads(json.dumps(_json_safe(calibration))) if calibration is not None else None
    atomic_save(ckpt, path)


def _subset_note(algorithm: Any) -> str:
    """`` (subset n/N images)`` when evaluations during training read the ``eval_subset``, else ``""``."""
    loaders = getattr(algorithm, "loader_dict", None) or {}
    if "test_open_subset" not in loaders or "test_open" not in loaders:
        return ""
    return f" (eval_subset {len(loaders['test_open_subset'].dataset)}/{len(loaders['test_open'].dataset)} images)"


class OpenSetEvalHook(Hook):
    """Open-set metrics during training and the full evaluation at its end (see the module docstring).

    Registered by PluginMixin.set_hooks at :data:`OPENSET_HOOK_PRIORITY`, so its ``after_train_step``
    runs after USB's EvaluationHook and before the LoggingHook, and its ``after_run`` after USB's
    EvaluationHook.after_run (which saves ``latest_model.pth`` and sets ``results_dict``).

    * ``after_train_step`` (at USB's evaluation iterations): :func:`openset_curve_point`; the values
      go into ``algorithm.log_dict`` (so the logging hook writes them to TensorBoard at the step
      of ``eval/*``) and into one log line. Not at the last iteration: the final evaluation of
      ``after_run`` evaluates the same (final EMA) weights with the full calibration and writes the
      curves' point of that step, so each ``test_open/*`` tag has one point per step and its last
      point is the number in openset_metrics.json.
    * ``after_run``: :func:`evaluate_openset` with a fresh :func:`calibrate`; stores the
      calibration in ``latest_model.pth`` (rank 0), the record as ``algorithm.openset_results``,
      and ``test_open/<metric>`` entries of the headline metrics in ``algorithm.results_dict``.
    """

    def after_train_step(self, algorithm) -> None:
        if self.is_last_iter(algorithm) or not self.every_n_iters(algorithm, algorithm.num_eval_iter):
            return
        if "test_open" not in (getattr(algorithm, "loader_dict", None) or {}):
            return
        values, primary = openset_curve_point(algorithm)
        log_dict = getattr(algorithm, "log_dict", None)
        if isinstance(log_dict, dict):
            log_dict.update({key: value for key, value in values.items() if math.isfinite(value)})
        if int(getattr(algorithm.args, "rank", 0) or 0) == 0:
            shown = ", ".join(f"{key[len(TB_PREFIX) :]} {value:.4f}" for key, value in values.items())
            algorithm.print_fn(
                f"it {algorithm.it + 1}/{algorithm.num_train_iter} | open-set test{_subset_note(algorithm)} "
                f"({primary}): {shown}"
            )

    def after_run(self, algorithm) -> None:
        if "test_open" not in (getattr(algorithm, "loader_dict", None) or {}):
            algorithm.print_fn("no open-set test split: open-set evaluation skipped")
            return
        checkpoint = os.path.abspath(
            os.path.join(algorithm.args.save_dir, algorithm.args.save_name, "latest_model.pth")
        )
        calibration = calibrate(algorithm)
        if _subset_note(algorithm) and int(getattr(algorithm.args, "rank", 0) or 0) == 0:
            n = len(algorithm.loader_dict["test_open"].dataset)
            algorithm.print_fn(
                f"final evaluation on all {n} open-set test images (evaluations during training used the "
                f"eval_subset of {len(algorithm.loader_dict['test_open_subset'].dataset)})"
            )
        record = evaluate_openset(algorithm, "test_open", checkpoint=checkpoint, calibration=calibration)
        if int(getattr(algorithm.args, "rank", 0) or 0) == 0 and os.path.isfile(checkpoint):
            store_calibration(checkpoint, calibration)
        algorithm.calibration = calibration
        algorithm.openset_results = record
        results = getattr(algorithm, "results_dict", None)
        if isinstance(results, dict):
            results.update({f"{TB_PREFIX}{k}": record[k] for k in HEADLINE_KEYS})


def load_metrics_json(path: str) -> Dict[str, Any]:
    """Read openset_metrics.json back (``null`` -> NaN for the numeric metrics)."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)

    def nan(v: Any) -> Any:
        return float("nan") if v is None else v

    for key in HEADLINE_KEYS:
        data[key] = nan(data.get(key))
    for values in (data.get("scores") or {}).values():
        for key in SCORE_KEYS:
            values[key] = nan(values.get(key))
        for group in (values.get("difficulty") or {}).values():
            for key in DIFFICULTY_KEYS:
                group[key] = nan(group.get(key))
    for group in (data.get("difficulty") or {}).values():
        for key in DIFFICULTY_KEYS:
            group[key] = nan(group.get(key))
    return data


__all__ = [
    "CALIBRATION_MAX_IMAGES",
    "CALIBRATION_MAX_IMAGES_TRAINING",
    "CALIBRATION_QUANTILES",
    "CONFUSION_FILE",
    "CURVE_KEYS",
    "DIFFICULTY_KEYS",
    "EvaluationError",
    "HEADLINE_KEYS",
    "HIST_FILE",
    "JSON_KEYS",
    "METRICS_FILE",
    "OPENSET_HOOK_PRIORITY",
    "OpenSetEvalHook",
    "ROC_FILE",
    "SCORE_KEYS",
    "calibrate",
    "calibration_indices",
    "difficulty_metrics",
    "evaluate_openset",
    "fit_calibration",
    "fit_thresholds",
    "load_metrics_json",
    "openset_curve_point",
    "openset_metrics_from_outputs",
    "store_calibration",
    "write_metrics_json",
    "write_openset_files",
]
