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

Nothing in the run folder is removed or changed, except the output files when ``out_dir`` is the
run folder (the default). The datasets are built without writing ``split.json``; a warning says
when the split built now differs from the one the run recorded.
"""

from __future__ import annotations

import json
import logging
import os
from argparse import Namespace
from typing import Any, Dict, Sequence, Tuple

from ..config import KeySpec, algorithm_specs, base_specs, build_config, parse_cli_pairs
from ..errors import CheckpointError, ConfigError

logger = logging.getLogger("usb_cfsg")

#: The key eval.py accepts besides the run's.
EVAL_SPECS: Dict[str, KeySpec] = {
    "out_dir": KeySpec("out_dir", "str", None, True, help="Where eval.py writes its files (default: the run folder)."),
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
    from ..engine.launch import run_dir, seed_everything
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
    _warn_if_split_differs(run_dir(args), info)
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


def evaluate_checkpoint(argv: Sequence[str]) -> Dict[str, Any]:
    """eval.py: configuration, algorithm, weights, :func:`evaluate_openset`; returns the metrics record."""
    from ..engine.launch import run_dir
    from .evaluator import calibrate, evaluate_openset

    args, ckpt = build_eval_config(argv)
    algorithm = load_eval_algorithm(args, ckpt, args.load_path)
    out_dir = args.out_dir or run_dir(args)
    calibration = ckpt.get("calibration")
    trained_mode = (ckpt.get("config") or {}).get("zs_mode", "output")
    if isinstance(calibration, dict) and getattr(args, "zs_mode", "output") != trained_mode:
        # the stored ranges and thresholds were fitted on the other mode's predictions
        logger.info(
            "zs_mode %s differs from the run's %s: fitting the score calibration again on the unlabeled "
            "training images with this mode's predictions",
            args.zs_mode,
            trained_mode,
        )
        calibration = None
    if isinstance(calibration, dict):
        logger.info(
            "using the score calibration stored in %s (fitted on %s)",
            args.load_path,
            calibration.get("source", "training data"),
        )
    else:
        logger.info("%s stores no score calibration: fitting it on the unlabeled training images", args.load_path)
        calibration = calibrate(algorithm)
    logger.info("evaluating %s (EMA weights) on the open-set test set; writing to %s", args.load_path, out_dir)
    record = evaluate_openset(
        algorithm, "test_open", out_dir=out_dir, checkpoint=os.path.abspath(args.load_path), calibration=calibration
    )
    if args.relevance_dir:
        from .relevance import RelevanceHook

        RelevanceHook().save(algorithm, "eval")
    return record


__all__ = ["EVAL_SPECS", "build_eval_config", "evaluate_checkpoint", "load_eval_algorithm", "read_training_checkpoint"]
