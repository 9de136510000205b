"""Open-set evaluation of a trained algorithm: metrics for every unknown score, files, logs, hook.

:func:`evaluate_openset` runs ``algorithm.predict_loader("test_open")`` (all test images, unseen
classes labelled K; the EMA weights, as USB evaluates), takes the closed-set prediction as the
argmax of ``logits`` and the unknown scores from ``algorithm.unknown_scores(outputs)`` (the
algorithm decides which scores exist and which is the headline one; every score is higher = more
unknown), and computes :func:`~usb_cfsg.evaluation.metrics.compute_openset_metrics` for each score
at the same threshold (``ood_threshold``). Rank 0 writes, into the run folder by default:

* ``openset_metrics.json`` -- strict JSON (NaN written as ``null``), schema :data:`JSON_KEYS`;
* ``roc.png`` (every score), ``score_hist.png`` (primary score, seen vs unseen, threshold line);
* ``confusion.csv`` -- (K+1)x(K+1) open-set confusion matrix of the primary score.

:class:`OpenSetEvalHook` does this once at the end of training, after USB's EvaluationHook has
saved ``latest_model.pth``. It evaluates the **final** EMA weights -- exactly those stored as
``ema_model`` in ``latest_model.pth``, whose path the JSON records -- not ``model_best.pth``:
USB picks its best model on ``eval/top-1-acc``, which is measured on the seen-class test images,
i.e. on part of the open-set test set; reporting the best model would select on the test set.
``eval.py`` on ``latest_model.pth`` reproduces the numbers exactly.
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
from semilearn.core.hooks import Hook

from ..errors import UsbCfsgError
from .metrics import MetricInputError, compute_openset_metrics, confusion_matrix, open_set_predictions
from .plots import _atomic_path, save_roc, save_score_hist, write_confusion_csv
from .report import format_summary

logger = logging.getLogger("usb_cfsg")

#: Headline metrics (of the primary score) in openset_metrics.json, TensorBoard and results.
HEADLINE_KEYS: Tuple[str, ...] = ("closed_acc", "auroc", "fpr95", "open_bacc", "unknown_recall", "h_score",
                                  "macro_f1")
#: Per-score metrics under ``"scores"`` in openset_metrics.json.
SCORE_KEYS: Tuple[str, ...] = ("auroc", "fpr95", "open_bacc", "unknown_recall", "h_score", "macro_f1", "threshold")
#: Top-level keys of openset_metrics.json, in file order.
JSON_KEYS: Tuple[str, ...] = ("algorithm", "dataset", "num_seen", "num_test_seen", "num_test_unseen",
                              "primary_score", *HEADLINE_KEYS, "threshold", "scores", "checkpoint")
METRICS_FILE = "openset_metrics.json"
ROC_FILE = "roc.png"
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
        raise EvaluationError(f"{source} names primary score {primary!r}, which is not among its scores "
                              f"{sorted(scores)}")
    out = {}
    for name, values in scores.items():
        arr = np.asarray(values, dtype=np.float64)
        if arr.shape != (n,):
            raise EvaluationError(f"{source}: score {name!r} has shape {arr.shape}, expected ({n},), one value "
                                  f"per test image")
        out[str(name)] = arr
    return out


def score_threshold(score: np.ndarray, threshold: Any) -> Any:
    """The rejection threshold used for one score.

    The configured ``ood_threshold`` is a probability-like cut: it is used for scores that lie in
    [0, 1] (msp, ova, mcm, glmcm, fused). A score on another scale (energy = -logsumexp of the
    logits) gets the Otsu threshold of its own values instead, so its threshold-based metrics are
    not degenerate; the threshold used is recorded per score in the JSON.
    """
    if threshold == "otsu" or (np.min(score) >= 0.0 and np.max(score) <= 1.0):
        return threshold
    return "otsu"


def openset_metrics_from_outputs(
    y_open: np.ndarray,
    logits: np.ndarray,
    scores: Mapping[str, Any],
    primary: str,
    num_seen: int,
    threshold: Any,
) -> Dict[str, Any]:
    """Headline and per-score open-set metrics from per-sample arrays.

    Args:
        y_open: Labels ``0..K`` (``K`` = unknown), shape [N].
        logits: Closed-set logits [N, K]; the closed-set prediction is their argmax.
        scores: Score name -> unknown score [N] (higher = more unknown).
        primary: The headline score's name.
        num_seen: K.
        threshold: Rejection threshold (``score >= threshold`` is unknown), or "otsu"; see
            :func:`score_threshold` for scores outside [0, 1].

    Returns:
        ``{"num_test_seen", "num_test_unseen", "primary_score", <HEADLINE_KEYS>, "threshold",
        "scores": {name: {<SCORE_KEYS>}}}``; undefined metrics are NaN.

    Raises:
        EvaluationError: Malformed scores. MetricInputError: malformed labels or non-finite scores.
    """
    y = np.asarray(y_open)
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[0] != y.shape[0] or logits.shape[1] != num_seen:
        raise EvaluationError(f"logits have shape {logits.shape}, expected ({y.shape[0]}, {num_seen})")
    closed_pred = logits.argmax(axis=1)
    checked = _validated_scores(scores, primary, y.shape[0], "unknown_scores")
    per_score = {}
    for name, arr in checked.items():
        try:
            per_score[name] = compute_openset_metrics(y, closed_pred, arr, score_threshold(arr, threshold), num_seen)
        except MetricInputError as exc:
            raise MetricInputError(f"score {name!r}: {exc}") from None
    head = per_score[primary]
    result: Dict[str, Any] = {
        "num_test_seen": head["num_test_seen"],
        "num_test_unseen": head["num_test_unseen"],
        "primary_score": primary,
    }
    result.update({k: head[k] for k in HEADLINE_KEYS})
    result["threshold"] = head["threshold"]
    result["scores"] = {name: {k: m[k] for k in SCORE_KEYS} for name, m in per_score.items()}
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
    is_unknown = np.asarray(y_open) == k
    open_pred = open_set_predictions(np.asarray(logits).argmax(axis=1), scores[primary], threshold, k)
    files = {
        "roc": save_roc(os.path.join(out_dir, ROC_FILE), scores, is_unknown,
                        title=f"Unknown detection ROC: {record['algorithm']} on {record['dataset']}"),
        "score_hist": save_score_hist(os.path.join(out_dir, HIST_FILE), scores[primary], is_unknown, primary,
                                      threshold=threshold),
        "confusion": write_confusion_csv(os.path.join(out_dir, CONFUSION_FILE),
                                         confusion_matrix(y_open, open_pred, k), class_names),
    }
    # the JSON last: its presence means the evaluation finished
    files["metrics"] = write_metrics_json(os.path.join(out_dir, METRICS_FILE), record)
    return files


def _run_dir(args) -> str:
    return os.path.join(args.save_dir, args.save_name)


def _tb_scalars(record: Mapping[str, Any]) -> Dict[str, float]:
    scalars = {f"{TB_PREFIX}{k}": record[k] for k in HEADLINE_KEYS}
    for name, values in record["scores"].items():
        scalars.update({f"{TB_PREFIX}{name}/{k}": values[k] for k in SCORE_KEYS})
    return {k: float(v) for k, v in scalars.items() if v is not None and math.isfinite(float(v))}


def evaluate_openset(
    algorithm: Any,
    dest: str = "test_open",
    out_dir: Optional[str] = None,
    checkpoint: Optional[str] = None,
) -> Dict[str, Any]:
    """Evaluate ``algorithm`` on the open-set test loader and write the report (rank 0).

    Args:
        algorithm: A built algorithm with :class:`~usb_cfsg.engine.plugin.PluginMixin` (``predict_loader``,
            ``unknown_scores``, ``openset_info``, ``args``).
        dest: Loader key; ``test_open`` = all test images, unseen classes labelled K.
        out_dir: Where to write; default the run folder ``<save_dir>/<save_name>/``.
        checkpoint: Path of the checkpoint holding the evaluated weights, recorded in the JSON.

    Returns:
        The record written to openset_metrics.json (keys :data:`JSON_KEYS`), NaN where undefined.

    Raises:
        EvaluationError: No such loader, or malformed scores from the algorithm.
        MetricInputError: Labels out of range or non-finite scores.
    """
    args = algorithm.args
    loaders = getattr(algorithm, "loader_dict", None) or {}
    if dest not in loaders:
        raise EvaluationError(f"no {dest!r} loader to evaluate (loaders: {sorted(loaders)}); the dataset must "
                              f"provide the open-set test split")
    k = int(algorithm.num_classes)
    outputs = algorithm.predict_loader(dest)
    y = np.asarray(outputs["y"])
    if "logits" not in outputs:
        raise EvaluationError(f"the net returned no 'logits' (outputs: {sorted(outputs)})")
    net_outputs = {key: value for key, value in outputs.items() if key != "y"}
    scores, primary = algorithm.unknown_scores(net_outputs)
    scores = _validated_scores(scores, primary, y.shape[0], f"{type(algorithm).__name__}.unknown_scores")
    metrics = openset_metrics_from_outputs(y, outputs["logits"], scores, primary, k, args.ood_threshold)

    info = getattr(algorithm, "openset_info", None)
    record: Dict[str, Any] = {
        "algorithm": str(args.algorithm),
        "dataset": str(info.dataset if info is not None else args.dataset),
        "num_seen": k,
    }
    record.update(metrics)
    record["checkpoint"] = checkpoint
    record = {key: record[key] for key in JSON_KEYS}

    title = f"Open-set evaluation: {record['algorithm']} on {record['dataset']} ({dest}, primary score {primary})"
    if int(getattr(args, "rank", 0) or 0) == 0:
        target = out_dir or _run_dir(args)
        class_names = list(info.seen_class_names) if info is not None else [f"class {i}" for i in range(k)]
        files = write_openset_files(target, record, y, outputs["logits"], scores, class_names)
        tb_log = getattr(algorithm, "tb_log", None)
        if tb_log is not None:
            tb_log.update(_tb_scalars(record), int(getattr(algorithm, "it", 0)))
        print_fn = getattr(algorithm, "print_fn", logger.info)
        shown = {key: value for key, value in record.items() if key not in _IN_TITLE}
        print_fn(format_summary(shown, title=title))
        print_fn(f"open-set metrics written to {files['metrics']}")
    return record


class OpenSetEvalHook(Hook):
    """Evaluate the open-set test set once, at the end of training (see the module docstring).

    Registered by PluginMixin.set_hooks at :data:`OPENSET_HOOK_PRIORITY`, so its ``after_run``
    runs after USB's EvaluationHook (which saves ``latest_model.pth`` and sets ``results_dict``).
    Stores the record as ``algorithm.openset_results`` and adds ``test_open/<metric>`` entries of
    the headline metrics to ``algorithm.results_dict``.
    """

    def after_run(self, algorithm) -> None:
        if "test_open" not in (getattr(algorithm, "loader_dict", None) or {}):
            algorithm.print_fn("no open-set test split: open-set evaluation skipped")
            return
        checkpoint = os.path.abspath(os.path.join(algorithm.args.save_dir, algorithm.args.save_name,
                                                  "latest_model.pth"))
        record = evaluate_openset(algorithm, "test_open", checkpoint=checkpoint)
        algorithm.openset_results = record
        results = getattr(algorithm, "results_dict", None)
        if isinstance(results, dict):
            results.update({f"{TB_PREFIX}{k}": record[k] for k in HEADLINE_KEYS})


def load_metrics_json(path: str) -> Dict[str, Any]:
    """Read openset_metrics.json back (``null`` -> NaN for the numeric metrics)."""
    with open(path, "r", encoding="utf-8") as fh:
        data = json.load(fh)

    def nan(v: Any) -> Any:
        return float("nan") if v is None else v

    for key in HEADLINE_KEYS:
        data[key] = nan(data.get(key))
    for values in (data.get("scores") or {}).values():
        for key in SCORE_KEYS:
            values[key] = nan(values.get(key))
    return data


__all__ = [
    "CONFUSION_FILE",
    "EvaluationError",
    "HEADLINE_KEYS",
    "HIST_FILE",
    "JSON_KEYS",
    "METRICS_FILE",
    "OPENSET_HOOK_PRIORITY",
    "OpenSetEvalHook",
    "ROC_FILE",
    "SCORE_KEYS",
    "evaluate_openset",
    "load_metrics_json",
    "openset_metrics_from_outputs",
    "write_metrics_json",
    "write_openset_files",
]
