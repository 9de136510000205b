"""predict.py's logic: classify image files with a trained checkpoint, flagging unknown (unseen-class) images.

The checkpoint is self-describing: train.py stores the resolved ``config``, the seen ``class_names``,
the normalisation ``mean_std``, the ``algorithm`` and the ``ema_model`` weights. The network is
rebuilt from the config with the same builder arguments as training (``PluginMixin.net_spec``,
:func:`~usb_cfsg.engine.plugin.clip_net_kwargs`), with no pretrained download and no network access
(the weights come from the checkpoint; the CLIP activation still follows the run's ``pretrained`` /
``pretrain_path``), and the EMA weights -- the ones every evaluation uses -- are loaded strictly.
Images get the evaluation transform (resize the short side to ``img_size / crop_ratio``, centre
crop ``img_size``, normalise).

Output, one JSON object per line on stdout, in input order::

    {"path", "label", "class_index", "closest_class", "confidence", "unknown_score", "is_unknown"}

* ``unknown_score``: the algorithm's primary open-set score (``compute_unknown_scores`` with the
  checkpoint's ``calibration``, the score ranges fitted on training data at the end of training;
  higher = more unknown); ``is_unknown``: ``unknown_score >= threshold`` (``--threshold``, default
  the threshold the calibration fitted for that score, else the run's ``ood_threshold``).
* ``label``: the predicted seen-class name, or ``"unknown"``; ``class_index``: its index in the
  checkpoint's ``class_names``, or **-1 for unknown** (never K, so it cannot be mistaken for a
  class index).
* ``closest_class``: the closed-set classifier's choice among the K seen classes (its argmax),
  given for every image, unknown ones included; it equals ``label`` when the image is not unknown.
* ``confidence``: the closed-set classifier's softmax probability of ``closest_class`` (its max over
  the K seen classes, in [1/K, 1]). For an ``"unknown"`` answer it is still that number: how
  strongly the closed-set head would have picked ``closest_class`` had the image been taken as
  seen. It is **not** the probability that the image is unknown (that is what ``unknown_score``
  measures); a confident closed-set guess can still be unknown (fine-grained look-alikes), which
  is why the open-set decision uses ``unknown_score`` alone.
* ``relevance`` (only with ``--relevance_dir DIR``, nets with a relevance map such as cfsg_clip's):
  the path of a PNG in ``DIR`` named ``<image stem>_relevance.png`` (``_2``, ``_3``, ... when stems
  repeat). It shows the image at its own size (short side at least 256 px) with the semantic
  filter's patch relevance -- which patches the coarse branch weighted most for the classes it
  considers likely; min-max scaled per image, so only relative within one image -- drawn over the
  centre crop the network saw (the rest dimmed), a colour bar, and the answer as title
  (``label``; for an unknown image also ``closest_class`` and ``unknown_score``).

An unreadable image gives ``{"path", "error"}`` and the rest continue (exit status 1 at the end).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
from argparse import Namespace
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import CheckpointError, UsbCfsgError

logger = logging.getLogger("usb_cfsg")

#: File extensions taken from folders (case-insensitive). Files named explicitly are always tried.
IMAGE_EXTENSIONS: Tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
)
#: What predict.py needs in a checkpoint.
REQUIRED_KEYS: Tuple[str, ...] = ("format", "config", "class_names", "mean_std", "algorithm", "ema_model")
#: Config keys the net and transform are rebuilt from.
_CONFIG_KEYS: Tuple[str, ...] = (
    "net",
    "num_classes",
    "img_size",
    "crop_ratio",
    "num_tuned_blocks",
    "text_encoder",
    "seed",
)


class PredictError(UsbCfsgError, RuntimeError):
    """predict.py cannot do what was asked (e.g. relevance maps from a net that has none)."""


# ----------------------------------------------------------------- algorithm hooks without an instance


def net_head_spec(cls: Any, args: Namespace) -> Tuple[str, Dict[str, Any]]:
    """``(head, head_kwargs)`` as set_model computes them, from the config alone."""
    head, kwargs = cls.net_spec(args)
    return head, dict(kwargs)


def score_function(
    cls: Any, args: Namespace, calibration: Optional[Dict[str, Any]] = None
) -> Callable[[Dict[str, np.ndarray]], Tuple[Dict[str, np.ndarray], str]]:
    """``outputs -> (scores, primary)`` as the algorithm's ``compute_unknown_scores``, without building it."""
    if hasattr(cls, "scores_with_calibration"):
        return lambda outputs: cls.scores_with_calibration(outputs, args, calibration)
    return lambda outputs: cls.compute_unknown_scores(outputs, args)


# ----------------------------------------------------------------- the predictor


@dataclass
class Predictor:
    """A rebuilt network with what it takes to turn images into predictions."""

    net: Any
    device: Any
    transform: Callable[[Any], Any]
    view: Callable[[Any], Any]
    class_names: List[str]
    threshold: float
    scores: Callable[[Dict[str, np.ndarray]], Tuple[Dict[str, np.ndarray], str]]
    algorithm: str
    amp_cm: Callable[[], Any]
    #: The checkpoint's calibration (fitted on training data), or None.
    calibration: Optional[Dict[str, Any]] = None
    #: The network's input size and the evaluation crop ratio (relevance figures map the crop back).
    img_size: int = 224
    crop_ratio: float = 0.875
    #: Whether ``threshold`` was given explicitly; if not, the calibrated threshold of the primary score wins.
    threshold_given: bool = True

    def threshold_for(self, primary: str) -> float:
        """The threshold applied to the primary score."""
        fitted = (self.calibration or {}).get("thresholds") or {}
        if not self.threshold_given and primary in fitted:
            return float(fitted[primary])
        return self.threshold

    def forward(self, images: Sequence[Any]) -> Dict[str, np.ndarray]:
        """Net outputs with a batch dimension, as float numpy arrays (what predict_loader collects)."""
        import torch

        x = torch.stack([self.transform(img) for img in images]).to(self.device)
        with torch.no_grad(), self.amp_cm():
            out = self.net(x)
        if isinstance(out, torch.Tensor):
            out = {"logits": out}
        return {
            k: v.float().cpu().numpy()
            for k, v in out.items()
            if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == x.shape[0]
        }

    def records(self, outputs: Dict[str, np.ndarray]) -> Tuple[List[Dict[str, Any]], str]:
        """One prediction record per image from the net outputs; also the primary score's name."""
        logits = np.asarray(outputs["logits"], dtype=np.float64)
        scores, primary = self.scores({k: v for k, v in outputs.items()})
        unknown = np.asarray(scores[primary], dtype=np.float64)
        if unknown.shape != (logits.shape[0],):
            raise PredictError(
                f"algorithm {self.algorithm!r}: score {primary!r} has shape {unknown.shape}, expected "
                f"({logits.shape[0]},)"
            )
        top = logits.max(axis=1)
        confidence = 1.0 / np.exp(logits - top[:, None]).sum(axis=1)
        pred = logits.argmax(axis=1)
        threshold = self.threshold_for(primary)
        out = []
        for i in range(logits.shape[0]):
            is_unknown = bool(unknown[i] >= threshold)
            out.append(
                {
                    "label": "unknown" if is_unknown else self.class_names[int(pred[i])],
                    "class_index": -1 if is_unknown else int(pred[i]),
                    "closest_class": self.class_names[int(pred[i])],
                    "confidence": float(confidence[i]),
                    "unknown_score": float(unknown[i]) if math.isfinite(unknown[i]) else None,
                    "is_unknown": is_unknown,
                }
            )
        return out, primary


def _config(ckpt: Dict[str, Any], path: str) -> Namespace:
    cfg = ckpt["config"]
    if not isinstance(cfg, dict):
        raise CheckpointError(
            f"{path!r}: 'config' is a {type(cfg).__name__}, expected the resolved config dict "
            f"that usb_cfsg's train.py stores"
        )
    missing = [k for k in _CONFIG_KEYS if k not in cfg]
    if missing:
        raise CheckpointError(
            f"{path!r}: the stored config lacks {missing}; expected a checkpoint written by usb_cfsg's train.py"
        )
    defaults = {
        "pretrain_path": None,
        "clip_model": None,
        "prompt_templates": None,
        "net_from_name": False,
        "amp": False,
        "ood_threshold": 0.5,
        "algorithm": ckpt["algorithm"],
    }
    return Namespace(**{**defaults, **cfg})


def load_predictor(path: str, device: str = "auto", threshold: Optional[float] = None) -> Predictor:
    """Rebuild the network of a train.py checkpoint with its EMA weights.

    Args:
        path: ``latest_model.pth`` / ``model_best.pth`` of a run.
        device: ``auto``, ``cpu`` or ``cuda``.
        threshold: Unknown-score threshold; default the threshold the checkpoint's calibration fitted for the
            primary score on training data, else the run's ``ood_threshold``.

    Raises:
        CheckpointError: Not a train.py checkpoint, or fields missing/inconsistent (the message names
            the file and what was expected).
    """
    from semilearn.core.utils import get_net_builder

    from ..datasets.transforms import build_transforms
    from ..engine.checkpoint import load_state_strict
    from ..engine.device import autocast_factory, resolve_device
    from ..engine.plugin import clip_net_kwargs
    from .offline import read_training_checkpoint

    ckpt = read_training_checkpoint(path, REQUIRED_KEYS)
    args = _config(ckpt, path)
    names = ckpt["class_names"]
    if not isinstance(names, (list, tuple)) or len(names) != int(args.num_classes):
        raise CheckpointError(
            f"{path!r}: class_names {names!r} does not list num_classes={args.num_classes} seen-class names"
        )
    mean_std = ckpt["mean_std"]
    try:
        mean, std = [tuple(float(v) for v in m) for m in mean_std]
    except (TypeError, ValueError):
        raise CheckpointError(f"{path!r}: mean_std {mean_std!r} is not [[3 means], [3 stds]]") from None
    from ..engine.plugin import plugin_class

    cls = plugin_class(str(ckpt["algorithm"]))
    dev = resolve_device(device)
    builder = get_net_builder(args.net, bool(args.net_from_name))
    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the JSON lines
        if getattr(builder, "usb_cfsg_clip", False):
            head, head_kwargs = net_head_spec(cls, args)
            kwargs = clip_net_kwargs(args, head, head_kwargs, names, args.prompt_templates)
            net = builder(**kwargs, weights_from_checkpoint=True)  # no CLIP weights read or fetched
        else:
            net = builder(num_classes=int(args.num_classes), pretrained=False, pretrained_path=None)
    load_state_strict(net, ckpt["ema_model"], "ema_model", path)
    if hasattr(net, "for_prediction"):  # zs_mode: weights -> the WiSE-FT merge, a plain net without the prior
        net = net.for_prediction()
    net = net.to(dev).eval()
    _, _, transform = build_transforms(int(args.img_size), float(args.crop_ratio), mean, std)
    t = float(args.ood_threshold) if threshold is None else float(threshold)
    if math.isnan(t):
        raise UsbCfsgError("--threshold is NaN")
    from .relevance import view_transform

    calibration = ckpt.get("calibration") if isinstance(ckpt.get("calibration"), dict) else None
    return Predictor(
        net=net,
        device=dev,
        transform=transform,
        view=view_transform(args.img_size, args.crop_ratio),
        class_names=list(names),
        threshold=t,
        scores=score_function(cls, args, calibration),
        algorithm=str(ckpt["algorithm"]),
        amp_cm=autocast_factory(dev, bool(args.amp)),
        calibration=calibration,
        img_size=int(args.img_size),
        crop_ratio=float(args.crop_ratio),
        threshold_given=threshold is not None,
    )


# ----------------------------------------------------------------- inputs and the run


def find_images(paths: Sequence[str]) -> List[str]:
    """Expand files and folders (recursively, :data:`IMAGE_EXTENSIONS`, sorted) into a list of paths.

    Files named explicitly are kept whatever their extension; paths that do not exist are kept too
    (they become error lines).
    """
    out: List[str] = []
    for p in paths:
        if os.path.isdir(p):
            found = []
            for root, dirs, files in os.walk(p):
                dirs.sort()
                found += [
                    os.path.join(root, f)
                    for f in sorted(files)
                    if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
                ]
            out += found
        else:
            out.append(p)
    return out


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class _OverlayNames:
    """Unique overlay file names in one folder: <stem>_relevance.png, <stem>_relevance_2.png, ..."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.used: set = set()

    def __call__(self, image_path: str) -> str:
        stem = os.path.splitext(os.path.basename(image_path))[0] or "image"
        name, n = f"{stem}_relevance.png", 1
        while name in self.used:
            n += 1
            name = f"{stem}_relevance_{n}.png"
        self.used.add(name)
        return os.path.join(self.folder, name)


#: What an error line suggests (predict.py has no skip_bad_images key: it always goes on with the other images).
_UNREADABLE_FIX = "predict.py skipped it and went on with the other images; replace or remove the file"


def _answer(record: Dict[str, Any]) -> str:
    """The title of a relevance figure: the answer, and for an unknown image what the closed-set head thought."""
    if record["is_unknown"]:
        score = record["unknown_score"]
        return (
            f"unknown (closest seen class: {record['closest_class']}, unknown score {score:.2f})"
            if score is not None
            else "unknown"
        )
    return f"{record['label']} (confidence {record['confidence']:.2f})"


def predict_paths(
    predictor: Predictor,
    paths: Sequence[str],
    batch_size: int = 32,
    relevance_dir: Optional[str] = None,
    write: Callable[[str], None] = print,
) -> int:
    """Predict every image in ``paths`` and ``write`` one JSON line per image, in order.

    Returns:
        The number of images that could not be read (each got an error line).

    Raises:
        PredictError: ``relevance_dir`` given but the network has no ``relevance`` output.
    """
    from ..datasets.images import load_rgb
    from .relevance import save_relevance_figure

    if batch_size < 1:
        raise UsbCfsgError(f"--batch_size must be >= 1, got {batch_size}")
    names = _OverlayNames(relevance_dir) if relevance_dir else None
    errors = 0
    for chunk in _chunks(list(paths), batch_size):
        images: Dict[int, Any] = {}
        failed: Dict[int, str] = {}
        for i, path in enumerate(chunk):
            try:
                images[i] = load_rgb(path, fix=_UNREADABLE_FIX)
            except (UsbCfsgError, OSError, ValueError) as exc:
                failed[i] = " ".join(str(exc).split())
        records: Dict[int, Dict[str, Any]] = {}
        if images:
            order = sorted(images)
            outputs = predictor.forward([images[i] for i in order])
            if "logits" not in outputs:
                raise PredictError(
                    f"algorithm {predictor.algorithm!r}: the net returned no 'logits' (outputs: {sorted(outputs)})"
                )
            if names is not None and "relevance" not in outputs:
                raise PredictError(
                    f"algorithm {predictor.algorithm!r} produces no relevance map (its net outputs "
                    f"{sorted(outputs)}); --relevance_dir needs a net with a 'relevance' output, "
                    f"such as cfsg_clip's"
                )
            recs, _ = predictor.records(outputs)
            for j, i in enumerate(order):
                records[i] = recs[j]
                if names is not None:
                    target = names(chunk[i])
                    save_relevance_figure(
                        images[i],
                        outputs["relevance"][j],
                        target,
                        title=_answer(records[i]),
                        img_size=predictor.img_size,
                        crop_ratio=predictor.crop_ratio,
                    )
                    records[i]["relevance"] = target
        for i, path in enumerate(chunk):
            if i in failed:
                errors += 1
                write(json.dumps({"path": path, "error": failed[i]}))
            else:
                write(json.dumps({"path": path, **records[i]}))
    return errors


class _Deprecated(argparse.Action):
    """Stores the value; warns when the option was spelled with hyphens (``--relevance-dir``): every other
    flag of train.py, eval.py and predict.py is spelled with underscores, as the config keys are."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: Namespace, values: Any, option_string=None) -> None:
        if option_string and "-" in option_string[2:]:
            logger.warning(
                "%s is deprecated and will be removed: use %s",
                option_string,
                "--" + option_string[2:].replace("-", "_"),
            )
        setattr(namespace, self.dest, values)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="predict.py",
        description="Classify images with a trained checkpoint; one JSON line per image on stdout "
        "(label 'unknown' and class_index -1 when the unknown score reaches the threshold).",
    )
    parser.add_argument(
        "--load_path", "--load-path", required=True, action=_Deprecated, help="checkpoint written by train.py"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="unknown-score threshold (score >= threshold: unknown); default the threshold the checkpoint's "
        "calibration fitted on training data for the primary score (threshold_rule), else the run's ood_threshold",
    )
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--batch_size", "--batch-size", type=int, default=32, action=_Deprecated)
    parser.add_argument(
        "--relevance_dir",
        "--relevance-dir",
        dest="relevance_dir",
        default=None,
        action=_Deprecated,
        help="save a relevance figure per image here: the image at its size, the patch relevance "
        "over the crop the net saw, a colour bar, the answer as title (nets with a "
        "'relevance' output, e.g. cfsg_clip); --relevance-dir is a deprecated spelling",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """predict.py. Exit status: 0 all predicted, 1 some images unreadable, 2 usage/checkpoint error."""
    from ..console import write_stdout

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if any(a in ("-h", "--help") for a in argv):
        write_stdout(parser.format_help().rstrip())  # quiet when the reader closes the pipe (| head)
        return 0
    from ..engine.launch import setup_logging

    setup_logging(None, logging.WARNING)
    args = parser.parse_args(argv)
    try:
        paths = find_images(args.paths)
        if not paths:
            raise UsbCfsgError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found in {args.paths}")
        predictor = load_predictor(args.load_path, args.device, args.threshold)
        if args.relevance_dir:
            os.makedirs(args.relevance_dir, exist_ok=True)

        def write(line: str) -> None:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

        errors = predict_paths(predictor, paths, args.batch_size, args.relevance_dir, write)
    except UsbCfsgError as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 2
    if errors:
        print(f"error: {errors} of {len(paths)} images could not be read (see the error lines)", file=sys.stderr)
        return 1
    return 0


__all__ = [
    "IMAGE_EXTENSIONS",
    "PredictError",
    "Predictor",
    "find_images",
    "load_predictor",
    "main",
    "net_head_spec",
    "predict_paths",
    "score_function",
]

if __name__ == "__main__":  # python -m usb_cfsg.evaluation.predict: the predict command (usb_cfsg.cli.predict)
    sys.exit(main())
