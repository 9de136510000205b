"""eval.py's logic: rebuild a run's algorithm, load a checkpoint's weights, evaluate the open-set test set.

The configuration comes from ``--c FILE`` (e.g. the run folder's ``config.yaml``) or, without
``--c``, from the config stored in the checkpoint; ``--key value`` pairs override either. Weights:
``model`` and ``ema_model`` are loaded strictly; optimizer and scheduler state are ignored. The
evaluation uses the EMA weights exactly as the end-of-training evaluation did (an ``EMA`` whose
shadow is the checkpoint's ``ema_model``, applied by ``predict_loader``), so evaluating
``latest_model.pth`` reproduces the run's ``openset_metrics.json``. The score calibration (ranges
and thresholds fitted on training data) is the one stored in the checkpoint; a checkpoint without
one (``model_best.pth``, runs from before calibrations) is calibrated now on the unlabeled training
images, exactly as the end of training does (:func:`~usb_cfsg.evaluation.evaluator.calibrate`).

**Where the results go.** Beside the checkpoint that was loaded (its folder), or into ``--out_dir``;
never into the ``save_dir``/``save_name`` stored in the config, which names the folder the run was
trained in (relative to wherever it was started) and may be another, live run. eval.py refuses to
overwrite another run's results (:func:`check_out_dir`): a folder whose ``openset_metrics.json``
records another checkpoint, or, for ``--out_dir``, a run folder of another checkpoint. Nothing else
in any run folder is removed or changed. The datasets are built without writing ``split.json``; a
warning says when the split built now differs from the one recorded beside the checkpoint.

``--relevance_dir DIR`` (on the command line only: the one in the run's config is the training run's
folder) saves relevance overlays of the first eval images to ``DIR/eval/``.

**Threshold rule.** ``--threshold_rule`` / ``--threshold_tpr`` on the command line that differ from
the rule of the stored calibration re-fit the calibration on the training images under the rule
given (re-evaluating a finished run under another rule needs no training).
"""

from __future__ import annotations

import json
import logging
import os
from argparse import Namespace
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from ..config import KeySpec, algorithm_specs, base_specs, build_config, parse_cli_pairs
from ..errors import CheckpointError, ConfigError

logger = logging.getLogger("usb_cfsg")

#: The key eval.py accepts besides the run's.
EVAL_SPECS: Dict[str, KeySpec] = {
    "out_dir": KeySpec(
        "out_dir",
        "str",
        None,
        True,
        help="Where eval.py writes its files (default: the folder of the checkpoint it loads).",
    ),
}
#: Keys read from a checkpoint's config that describe the past process, not the evaluation.
_RUNTIME_KEYS = {
    "rank",
    "gpu",
    "world_size",
    "dist_url",
    "multiprocessing_distributed",
    "resume",
    "lb_dest_len",
    "ulb_dest_len",
}


def read_training_checkpoint(path: str, required: Sequence[str] = ("format", "model", "ema_model")) -> Dict[str, Any]:
    """Load a checkpoint written by train.py and check its format; errors say what the file is."""
    from ..engine.checkpoint import safe_load
    from ..engine.plugin import CHECKPOINT_FORMAT

    ckpt = safe_load(path, required=required)
    if ckpt["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path!r} is a checkpoint of format {ckpt['format']!r}, expected "
            f"{CHECKPOINT_FORMAT!r} (written by usb_cfsg's train.py)"
        )
    return ckpt


def build_eval_config(argv: Sequence[str]) -> Tuple[Namespace, Dict[str, Any]]:
    """Resolve eval.py's configuration and read the checkpoint.

    Returns:
        ``(args, checkpoint)``.

    Raises:
        ConfigError: No ``--load_path``, unknown keys, bad values. CheckpointError: bad checkpoint.
    """
    from ..registry import get_algorithm_class

    pairs = parse_cli_pairs(argv)
    load_path = pairs.get("load_path")
    if not load_path or load_path.strip().lower() in ("none", "null"):
        raise ConfigError("eval.py needs --load_path CHECKPOINT (e.g. <save_dir>/<save_name>/latest_model.pth)")
    ckpt = read_training_checkpoint(load_path)
    if "c" in pairs:
        args = build_config(argv, extra_specs=EVAL_SPECS)
    else:
        stored = ckpt.get("config")
        if not isinstance(stored, dict):
            raise CheckpointError(
                f"{load_path!r} stores no config; give the run's config with --c <save_dir>/<save_name>/config.yaml"
            )
        algorithm = pairs.get("algorithm", stored.get("algorithm", "fixmatch"))
        specs = {**base_specs(), **algorithm_specs(get_algorithm_class(str(algorithm))), **EVAL_SPECS}
        values = {k: v for k, v in stored.items() if k in specs and k not in _RUNTIME_KEYS}
        values.update(pairs)
        args = build_config([], overrides=values, extra_specs=EVAL_SPECS)
    if ckpt.get("algorithm") is not None and ckpt["algorithm"] != args.algorithm:
        raise CheckpointError(
            f"{load_path!r} was written by algorithm {ckpt['algorithm']!r}, but the config says {args.algorithm!r}"
        )
    stored_build = (ckpt.get("config") or {}).get("demo_clip_sha256")
    if stored_build:  # the evaluated weights are the checkpoint's: its demo CLIP build goes into the metrics
        args.demo_clip_sha256 = stored_build
    return args, ckpt


def _warn_if_split_differs(run_dir: str, info: Any) -> None:
    """Warn when the split rebuilt now is not the one the run recorded in ``run_dir/split.json``."""
    from ..datasets.build import SPLIT_FILE

    path = os.path.join(run_dir, SPLIT_FILE)
    if info is None or not os.path.isfile(path):
        return
    try:
        with open(path, "rb") as fh:
            recorded = json.loads(fh.read()).get("split")
    except ValueError:
        recorded = None
    if recorded != json.loads(json.dumps(info.split.to_dict())):
        logger.warning(
            "the data split built now differs from the one the run recorded in %s (the data "
            "or split settings changed): the labeled/unlabeled split is not the run's",
            path,
        )


def load_eval_algorithm(args: Namespace, ckpt: Dict[str, Any], load_path: str):
    """Build the run's algorithm on the configured device with the checkpoint's weights (EMA ready).

    Returns:
        The algorithm, in the state the end-of-training evaluation saw.
    """
    from semilearn.core.utils import EMA, get_net_builder

    from ..engine.checkpoint import load_state_strict
    from ..engine.device import resolve_device
    from ..engine.launch import seed_everything
    from ..engine.plugin import build_algorithm
    from ..nets.backbone import unwrap

    args.resume = False
    args.world_size, args.rank, args.distributed, args.multiprocessing_distributed = 1, 0, False, False
    device = resolve_device(args.device, args.gpu)
    args.gpu = device.index if device.type == "cuda" else None
    seed_everything(args.seed)
    net_builder = get_net_builder(args.net, args.net_from_name)
    algorithm = build_algorithm(
        args, net_builder, None, logger, device=device, record_split=False, weights_from_checkpoint=True
    )
    info = algorithm.openset_info
    _warn_if_split_differs(os.path.dirname(os.path.abspath(load_path)), info)
    stored_names = ckpt.get("class_names")
    if info is not None and stored_names is not None and list(stored_names) != list(info.seen_class_names):
        raise CheckpointError(
            f"{load_path!r} was trained on seen classes {list(stored_names)[:5]}..., but the "
            f"dataset now gives {list(info.seen_class_names)[:5]}...: use the run's data and "
            f"split settings"
        )
    load_state_strict(unwrap(algorithm.model), ckpt["model"], "model", load_path)
    load_state_strict(unwrap(algorithm.ema_model), ckpt["ema_model"], "ema_model", load_path)
    algorithm.model = algorithm.model.to(device)
    algorithm.ema_model = algorithm.ema_model.to(device)
    # what EMAHook.before_run does on resume: the EMA shadow is the saved ema_model
    algorithm.ema = EMA(algorithm.model, algorithm.ema_m)
    algorithm.ema.load(algorithm.ema_model)
    algorithm.load_extra_state(ckpt.get("extra") or {})
    algorithm.it = int(ckpt.get("it", 0))
    return algorithm


def _recorded_checkpoint(metrics_path: str) -> Optional[str]:
    """The checkpoint an ``openset_metrics.json`` records (None when it records none)."""
    try:
        with open(metrics_path, encoding="utf-8") as fh:
            recorded = json.load(fh).get("checkpoint")
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(
            f"{metrics_path} exists but cannot be read ({exc}): eval.py does not overwrite it; give --out_dir "
            f"with a new folder, or remove the file"
        ) from None
    return str(recorded) if recorded else None


def check_out_dir(out_dir: str, load_path: str) -> None:
    """Refuse to write eval.py's files where they would replace another run's results.

    Allowed: a folder without results; a folder whose ``openset_metrics.json`` records this very
    checkpoint, or (the checkpoint's own folder, e.g. a copied run) a checkpoint of the same file
    name. Refused: results of another checkpoint (``model_best.pth`` beside ``latest_model.pth``
    included), and an ``--out_dir`` that is another run's folder (it holds a config.yaml or a
    checkpoint).

    Raises:
        ConfigError: Naming the folder, whose results are there, the checkpoint evaluated and the fix.
    """
    from .evaluator import METRICS_FILE

    ckpt_dir = os.path.dirname(os.path.abspath(load_path))
    own_folder = os.path.realpath(out_dir) == os.path.realpath(ckpt_dir)
    metrics = os.path.join(out_dir, METRICS_FILE)
    fix = (
        f"give --out_dir with a folder of its own (e.g. --out_dir {os.path.join(ckpt_dir, 'eval_' + _stem(load_path))})"
        f", or remove {metrics} if it may go"
    )
    if os.path.isfile(metrics):
        recorded = _recorded_checkpoint(metrics)
        same = recorded is not None and (
            os.path.realpath(recorded) == os.path.realpath(load_path)
            or (own_folder and os.path.basename(recorded) == os.path.basename(load_path))
        )
        if not same:
            raise ConfigError(
                f"{metrics} holds the results of {recorded or 'another evaluation'}, not of {load_path}: eval.py "
                f"does not overwrite another run's results; {fix}"
            )
        return
    if not own_folder and os.path.isdir(out_dir):
        run_files = sorted(
            f for f in os.listdir(out_dir) if f == "config.yaml" or f.endswith(".pth") or f == "split.json"
        )
        if run_files:
            raise ConfigError(
                f"--out_dir {out_dir} is another run's folder (it holds {', '.join(run_files)}), not the folder of "
                f"{load_path}: eval.py does not write into a run it did not load; {fix}"
            )


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0] or "checkpoint"


def _rule_of(calibration: Dict[str, Any]) -> Tuple[str, Optional[float]]:
    rule = str(calibration.get("threshold_rule") or "otsu")  # calibrations from before threshold_rule: otsu
    tpr = calibration.get("threshold_tpr")
    return rule, float(tpr) if rule == "labeled_tpr" and tpr is not None else None


def stored_calibration(args: Namespace, ckpt: Dict[str, Any], argv: Sequence[str]) -> Optional[Dict[str, Any]]:
    """The checkpoint's calibration when it fits this evaluation, else None (it is then fitted again).

    It does not fit when ``zs_mode`` differs from the run's (its ranges and thresholds were fitted on
    the other mode's predictions), or when ``--threshold_rule`` / ``--threshold_tpr`` given on the
    command line differ from the rule it was fitted under.
    """
    calibration = ckpt.get("calibration")
    if not isinstance(calibration, dict):
        logger.info("%s stores no score calibration: fitting it on the training images", args.load_path)
        return None
    trained_mode = (ckpt.get("config") or {}).get("zs_mode", "output")
    if getattr(args, "zs_mode", "output") != trained_mode:
        logger.info(
            "zs_mode %s differs from the run's %s: fitting the score calibration again on the training images "
            "with this mode's predictions",
            args.zs_mode,
            trained_mode,
        )
        return None
    given = set(parse_cli_pairs(argv)) & {"threshold_rule", "threshold_tpr"}
    wanted = (str(args.threshold_rule), float(args.threshold_tpr) if args.threshold_rule == "labeled_tpr" else None)
    if given and _rule_of(calibration) != wanted:
        logger.info(
            "threshold_rule %s differs from the stored calibration's (%s): fitting the thresholds again on the "
            "training images",
            " ".join(str(v) for v in wanted if v is not None),
            " ".join(str(v) for v in _rule_of(calibration) if v is not None),
        )
        return None
    logger.info(
        "using the score calibration stored in %s (fitted on %s)",
        args.load_path,
        calibration.get("source", "training data"),
    )
    return calibration


def evaluate_checkpoint(argv: Sequence[str], show: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """eval.py: configuration, algorithm, weights, :func:`evaluate_openset`; returns the metrics record.

    Args:
        argv: eval.py's arguments.
        show: Where the summary goes (eval.py: stdout); default the log.

    Raises:
        ConfigError: Bad arguments, or an output folder holding another run's results (:func:`check_out_dir`).
    """
    from .evaluator import calibrate, evaluate_openset

    args, ckpt = build_eval_config(argv)
    out_dir = args.out_dir or os.path.dirname(os.path.abspath(args.load_path))
    check_out_dir(out_dir, args.load_path)  # before the minutes of building and evaluating
    algorithm = load_eval_algorithm(args, ckpt, args.load_path)
    calibration = stored_calibration(args, ckpt, argv)
    if calibration is None:
        calibration = calibrate(algorithm)
    logger.info("evaluating %s (EMA weights) on the open-set test set; writing to %s", args.load_path, out_dir)
    record = evaluate_openset(
        algorithm,
        "test_open",
        out_dir=out_dir,
        checkpoint=os.path.abspath(args.load_path),
        calibration=calibration,
        show=show,
    )
    if args.relevance_dir and "relevance_dir" in parse_cli_pairs(argv):
        from .relevance import RelevanceHook

        RelevanceHook().save(algorithm, "eval")
    elif args.relevance_dir:  # the training run's folder (relative to where it ran): not eval.py's to write into
        logger.info(
            "relevance overlays not saved: give --relevance_dir DIR (the run's %s is not used)", args.relevance_dir
        )
    return record


__all__ = [
    "EVAL_SPECS",
    "build_eval_config",
    "check_out_dir",
    "evaluate_checkpoint",
    "load_eval_algorithm",
    "read_training_checkpoint",
    "stored_calibration",
]
