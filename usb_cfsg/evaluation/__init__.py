"""Open-set evaluation: metrics, pictures, the one-screen summary, the evaluator and its training hook.

Submodules not re-exported here: :mod:`.offline` (eval.py) and :mod:`.predict` (predict.py).
"""

from ..engine.plugin import register_run_hook
from .evaluator import (
    CONFUSION_FILE,
    HEADLINE_KEYS,
    HIST_FILE,
    JSON_KEYS,
    METRICS_FILE,
    OPENSET_HOOK_PRIORITY,
    ROC_FILE,
    SCORE_KEYS,
    EvaluationError,
    OpenSetEvalHook,
    evaluate_openset,
    load_metrics_json,
    openset_metrics_from_outputs,
    write_metrics_json,
    write_openset_files,
)
from .metrics import (
    METRIC_KEYS,
    MetricInputError,
    auroc,
    closed_set_accuracy,
    compute_openset_metrics,
    confusion_matrix,
    fpr_at_tpr,
    fpr_at_tpr_id,
    h_score,
    macro_f1,
    open_balanced_accuracy,
    open_seen_accuracy,
    open_set_predictions,
    otsu_threshold,
    roc_curve,
    unknown_recall,
)
from .plots import DPI, FIGSIZE, read_confusion_csv, save_roc, save_score_hist, write_confusion_csv
from .relevance import RelevanceHook, relevance_grid, save_relevance_overlay
from .report import HEADLINE, SCORE_COLUMNS, format_percent, format_summary

__all__ = [
    "CONFUSION_FILE",
    "DPI",
    "FIGSIZE",
    "HEADLINE",
    "HEADLINE_KEYS",
    "HIST_FILE",
    "JSON_KEYS",
    "METRICS_FILE",
    "METRIC_KEYS",
    "ROC_FILE",
    "SCORE_COLUMNS",
    "SCORE_KEYS",
    "EvaluationError",
    "MetricInputError",
    "OpenSetEvalHook",
    "auroc",
    "closed_set_accuracy",
    "compute_openset_metrics",
    "confusion_matrix",
    "evaluate_openset",
    "format_percent",
    "format_summary",
    "fpr_at_tpr",
    "fpr_at_tpr_id",
    "h_score",
    "load_metrics_json",
    "macro_f1",
    "open_balanced_accuracy",
    "open_seen_accuracy",
    "open_set_predictions",
    "openset_metrics_from_outputs",
    "otsu_threshold",
    "read_confusion_csv",
    "relevance_grid",
    "roc_curve",
    "save_relevance_overlay",
    "save_roc",
    "save_score_hist",
    "unknown_recall",
    "write_confusion_csv",
    "write_metrics_json",
    "write_openset_files",
]

# Every training run evaluates open-set after USB's EvaluationHook.after_run (HIGH), which saves
# latest_model.pth and sets results_dict; with relevance_dir it also draws relevance maps.
register_run_hook("OpenSetEvalHook", lambda args: OpenSetEvalHook(), OPENSET_HOOK_PRIORITY)
register_run_hook("RelevanceHook", lambda args: RelevanceHook() if args.relevance_dir else None, "LOW")
