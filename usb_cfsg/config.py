"""Typed, validated configuration: defaults < YAML (``--c FILE``) < command line.

Every key a run understands is declared once, with its type and help text: the common keys in
:class:`BaseConfig` (USB's names keep USB's meaning) and the algorithm's own keys from its
``get_argument()`` (USB's ``SSL_Argument`` list). Any key can be given on the command line as
``--key value``; unknown keys and values of the wrong type are errors naming the key and the
closest valid keys. The result is an ``argparse.Namespace``, which is what USB algorithms expect.

Paths (:data:`PATH_RULE`, the one rule): a relative path in a config, whether from a YAML file, the
command line or a saved ``config.yaml``, is relative to the working folder of the process that reads
it (train, eval, predict, compare and every run compare starts, which runs in compare's folder), never
to the config file's folder or to where the package is installed; a leading ``~`` is the user's home,
expanded here for every key of :data:`PATH_KEYS` alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Literal, Optional, Sequence, Tuple

import yaml

from .algorithm_keys import algorithm_class, check_ranges, one_of  # noqa: F401 (one_of, check_ranges re-exported)
from .errors import ConfigError, did_you_mean

logger = logging.getLogger("usb_cfsg")

_NONE_STRINGS = {"none", "null", "~", ""}
#: Keys whose values are file or folder paths (``out_dir``: eval's own key); see :data:`PATH_RULE`.
PATH_KEYS: Tuple[str, ...] = (
    "save_dir",
    "load_path",
    "pretrain_path",
    "pretrain_pool",
    "data_dir",
    "relevance_dir",
    "out_dir",
)
#: The rule for relative paths in a config, as ``--help`` prints it.
PATH_RULE = (
    "Paths (" + ", ".join(PATH_KEYS) + "): a relative path is relative to the folder the command runs in "
    "(compare's runs run in compare's folder), never to the config file's folder; ~ is the home folder."
)
_TRUE = {"true", "yes", "t", "y", "1"}
_FALSE = {"false", "no", "f", "n", "0"}


def _help(text: str, default: Any) -> Any:
    return field(default=default, metadata={"help": text})


def _help_list(text: str) -> Any:
    return field(default=None, metadata={"help": text})


@dataclass
class BaseConfig:
    """Keys every run understands. Algorithm-specific keys come from ``get_argument()``."""

    # --- saving & loading (USB names) ---
    save_dir: str = _help("Parent folder of run folders.", "./saved_models")
    save_name: Optional[str] = _help(
        "Run folder name: the run lives in <save_dir>/<save_name>/ (default: USB's naming "
        "<algorithm>_<dataset>_<num_labels>_<seed>).",
        None,
    )
    resume: bool = _help(
        "Resume from load_path (model, EMA, optimizer, scheduler, iteration, RNG); every key that "
        "shapes training must equal the checkpoint's.",
        False,
    )
    resume_extend: bool = _help(
        "On resume, accept a changed num_train_iter (and epoch): the lr schedule is recomputed "
        "for the new length, with a logged notice of what changes.",
        False,
    )
    load_path: Optional[str] = _help(
        "Checkpoint to resume from or evaluate (resume default: <save_dir>/<save_name>/latest_model.pth).", None
    )
    overwrite: bool = _help(
        "Replace an existing finished run folder (otherwise an existing folder is an error); the "
        "old folder is deleted only once the new run has started.",
        False,
    )
    use_tensorboard: bool = _help("Write TensorBoard events to the run folder.", True)
    use_wandb: bool = _help("Log to Weights & Biases (USB's WANDBHook).", False)
    use_aim: bool = _help("Log to Aim (USB's AimHook).", False)
    # --- training schedule (USB names) ---
    epoch: int = _help(
        "Number of epochs; num_train_iter must be divisible by it (num_train_iter given alone on the "
        "command line adjusts it, with a notice).",
        1,
    )
    num_train_iter: int = _help("Total training iterations (0: evaluate only, e.g. clip_zeroshot).", 20)
    num_warmup_iter: int = _help("Linear warm-up iterations of the cosine schedule.", 0)
    num_eval_iter: int = _help("Evaluate (and checkpoint) every this many iterations.", 10)
    num_log_iter: int = _help("Log losses, lr, images/s and ETA every this many iterations.", 5)
    num_labels: int = _help("Total labeled images, spread evenly over the num_classes seen classes.", 400)
    batch_size: int = _help("Labeled batch size per process.", 8)
    uratio: int = _help("Unlabeled batch = uratio * batch_size.", 1)
    eval_batch_size: int = _help("Batch size of evaluation loaders.", 16)
    ema_m: float = _help("EMA momentum of the evaluation model.", 0.999)
    ulb_loss_ratio: float = _help("Weight of the unlabeled loss (USB's lambda_u).", 1.0)
    # --- optimizer (USB names) ---
    optim: Literal["SGD", "AdamW"] = _help("Optimizer.", "SGD")
    lr: float = _help("Learning rate.", 3e-2)
    momentum: float = _help("SGD momentum.", 0.9)
    weight_decay: float = _help("Weight decay.", 5e-4)
    layer_decay: float = _help("Layer-wise lr decay (1.0 = none); uses the net's group_matcher.", 1.0)
    clip_grad: float = _help("Clip gradient norm to this value (0 = off).", 0.0)
    max_bad_steps: int = _help(
        "A step whose loss is not finite is skipped with a warning; this many in a row stop "
        "the run with an error (the last checkpoint is kept).",
        5,
    )
    # --- network ---
    net: str = _help(
        "Network name (ours: clip_vit_b16, clip_vit_b32, clip_vit_l14, clip_tiny, open_clip; or any semilearn net).",
        "clip_vit_b16",
    )
    clip_model: Optional[str] = _help(
        "net: open_clip only: the open_clip ViT to build (an architecture such as ViT-L-14-336 or ViT-B-16-quickgelu, hf-hub:org/repo, or local-dir:/folder).",
        None,
    )
    net_from_name: bool = _help("Take `net` from torchvision.models (USB).", False)
    pretrained: Optional[str] = _help(
        "open_clip pretrained tag (e.g. openai), or none for an explicit random init.", "openai"
    )
    pretrain_path: Optional[str] = _help(
        "Local weights file (OpenAI TorchScript .pt, open_clip/HF .bin/.pt/.safetensors); overrides `pretrained`.", None
    )
    use_pretrain: Optional[bool] = _help(
        "USB compatibility: false means pretrained none; true keeps `pretrained`.", None
    )
    num_tuned_blocks: int = _help(
        "Trainable last visual blocks m; blocks 1..L-m are frozen and run without autograd.", 4
    )
    text_encoder: Literal["clip", "minilm"] = _help(
        "Where class-name embeddings come from: CLIP's text tower, or the offline MiniLM sentence encoder "
        "through a learned projection (for random-init CLIP, whose text embeddings collapse).",
        "clip",
    )
    prompt_templates: Optional[List[str]] = _help_list("Prompt templates with one {} (default: the dataset's).")
    zs_weight: float = _help(
        "alpha of the zero-shot prior, for any algorithm on our CLIP nets: closed logits = (1 - alpha) * trained + "
        "alpha * the pretrained CLIP's zero-shot classifier (WiSE-FT); 0 = none (USB's algorithms and our baselines; "
        "cfsg_clip: 0.5).",
        0.0,
    )
    zs_mode: Literal["output", "weights"] = _help(
        "How the zero-shot prior is kept: output = ensemble of logits in training and prediction (a frozen copy of "
        "the tuned blocks runs beside the net); weights = WiSE-FT: plain fine-tuning, then the weight-space merge "
        "for every prediction (no extra forward; cfsg_clip's pseudo-labels still use the output ensemble).",
        "output",
    )
    # --- algorithm (USB names) ---
    algorithm: str = _help("Registered algorithm (USB's or ours).", "fixmatch")
    use_cat: bool = _help("Concatenate labeled and unlabeled batches in one forward (USB).", True)
    amp: bool = _help("Mixed precision: fp16 + GradScaler on CUDA, bf16 autocast on CPU.", False)
    amp_dtype: Literal["auto", "bf16", "fp16"] = _help(
        "Autocast dtype when amp is on: auto = fp16 + GradScaler on CUDA, bf16 on CPU; bf16 on CUDA needs no "
        "GradScaler; fp16 is CUDA only.",
        "auto",
    )
    compile: bool = _help(
        "torch.compile the transformer blocks and heads (falls back to eager with a warning if compilation fails).",
        False,
    )
    channels_last: bool = _help("NHWC memory format for the patch-embedding convolution (CUDA only).", False)
    # --- data ---
    data_dir: Optional[str] = _help("Dataset root as its publisher ships it (see README).", "./data")
    dataset: str = _help("Registered dataset name (cub200, stanford_cars, ...).", "cub200")
    num_classes: int = _help("K: number of SEEN classes (the classifier's size).", 100)
    train_sampler: str = _help("USB sampler name (RandomSampler).", "RandomSampler")
    num_workers: int = _help("DataLoader workers per loader (the unlabeled loader uses twice as many, as USB).", 1)
    persistent_workers: bool = _help("Keep DataLoader workers alive between epochs (same data either way).", True)
    pin_memory: bool = _help("Page-locked batches for faster host-to-GPU copies (CUDA only).", True)
    cache_images: Optional[bool] = _help(
        "Decode and resize every image once and keep them in shared memory for all workers (same images as "
        "without the cache). none (default) = on when the decoded images fit cache_budget_gb, else off with a "
        "logged notice; true = always; false = never.",
        None,
    )
    cache_budget_gb: float = _help(
        "Memory the automatic image cache (cache_images: none) may take per training process, in GB "
        "(CUB-200-2011 at 224 px: about 2 GB).",
        8.0,
    )
    augment_device: Literal["none", "cpu", "cuda"] = _help(
        "Where the training views are made: none = USB's PIL transforms in the DataLoader workers; cpu / cuda = "
        "workers only read and collate the resized uint8 images, and the weak and strong views (USB's crop, flip, "
        "RandAugment and Cutout, per-image random parameters) are made as batched tensor operations on that "
        "device before each step (cuda: on the GPU; same operations and ranges, different random draws than none).",
        "none",
    )
    include_lb_to_ulb: bool = _help("Also use labeled images as unlabeled (USB).", True)
    img_size: int = _help("Input size in pixels.", 224)
    crop_ratio: float = _help("Resize to img_size/crop_ratio before cropping.", 0.875)
    class_split: Literal["first", "random", "ssb"] = _help(
        "Seen classes: the first K in the dataset's order, seeded random, or ssb (the Semantic Shift Benchmark's "
        "known classes; cub200, fgvc_aircraft, stanford_cars).",
        "first",
    )
    split_seed: int = _help("Seed of the class split and the labeled/unlabeled split.", 0)
    seen_classes: Optional[List[Any]] = _help_list("Explicit seen classes (names or indices); overrides class_split.")
    ulb_unseen_ratio: Optional[float] = _help("Cap unseen-class images to this fraction of the unlabeled set.", None)
    pretrain_pool: Optional[str] = _help(
        "A demo CLIP card (python -m usb_cfsg_tools.demo_clip writes <dir>/card.json): its pretraining images are "
        "removed from the training set, so none is ever a labeled or unlabeled image.",
        None,
    )
    demo_clip_sha256: Optional[str] = _help(
        "Recorded by the run: the sha256 of the demo CLIP build it uses (the card.json beside pretrain_path, or "
        "pretrain_pool's card), in config.yaml and openset_metrics.json. Given (a saved config.yaml gives it), a fresh "
        "run refuses any other build; none = record the current one.",
        None,
    )
    scene_size: int = _help("fmnist_cluttered / fmnist_badged: canvas side in pixels.", 96)
    scene_fragments: int = _help(
        "fmnist_cluttered: clutter fragments of other items per canvas, placed beside the item.", 2
    )
    scene_seed: int = _help(
        "fmnist_cluttered / fmnist_badged: seed of the images' layout (item place and scale, fragments or mark).", 0
    )
    badge_size: int = _help("fmnist_badged: side of the mark (an 8x8 digit, resized) in pixels.", 32)
    badge_items: Optional[List[Any]] = _help_list(
        "fmnist_badged: items with seen and near-OOD classes (names or indices; default T-shirt/top, Pullover, Coat, "
        "Bag); the other items are far-OOD."
    )
    badge_marks: Optional[List[Any]] = _help_list(
        "fmnist_badged: three mark digits: two seen marks, then the near-OOD mark (default 0, 1, 4)."
    )
    badge_erase: bool = _help(
        "fmnist_badged: draw the test images without their mark (control: near-OOD AUROC must fall to chance).", False
    )
    download: bool = _help("Download the dataset from its publisher when online.", False)
    skip_bad_images: bool = _help("Skip (and count) missing/corrupt images instead of failing.", False)
    class_names: Optional[List[str]] = _help_list("image_folder: class order (default: sorted folder names).")
    # --- open-set evaluation ---
    ood_threshold: float = _help(
        "Unknown-score threshold (score >= threshold means unknown): the evaluation's cut of scores in [0, 1] "
        "under threshold_rule otsu, and cfsg_clip's OVA inlier selection in training.",
        0.5,
    )
    threshold_rule: Literal["labeled_tpr", "otsu"] = _help(
        "How the K+1-way prediction's thresholds are fitted on training data: labeled_tpr = per score, the "
        "threshold keeping threshold_tpr of the labeled training images as seen; otsu = ood_threshold for scores "
        "in [0, 1], Otsu's threshold of the unlabeled training scores for the others (docs/results/calibration.md).",
        "labeled_tpr",
    )
    threshold_tpr: float = _help("threshold_rule labeled_tpr: share of the labeled training images kept as seen.", 0.95)
    energy_temperature: float = _help(
        "T of the energy score -T*logsumexp(logits/T) that every algorithm reports (Liu et al. 2020; their code: 1).",
        1.0,
    )
    relevance_dir: Optional[str] = _help("Save relevance-map overlays of a fixed set of eval images here.", None)
    eval_subset: Optional[int] = _help(
        "Evaluations during training (eval/* and the test_open/* curves) use a fixed, seeded, class-stratified "
        "subset of this many test images (0 or none: all); model_best.pth and eval/best_acc are then chosen on "
        "it. The final evaluation (openset_metrics.json) always uses the full test set.",
        None,
    )
    # --- devices & distributed ---
    device: Literal["auto", "cpu", "cuda"] = _help("auto = CUDA when available, else CPU.", "auto")
    seed: int = _help("Random seed.", 0)
    gpu: Optional[int] = _help("CUDA device index for a single-process run.", None)
    world_size: int = _help("Number of training processes in all.", 1)
    rank: int = _help("Global rank of this process (set by the launcher).", 0)
    multiprocessing_distributed: bool = _help("train.py spawns world_size processes on this machine.", False)
    dist_url: Optional[str] = _help(
        "torch.distributed init URL (default: a free local port, or env:// under torchrun).", None
    )
    dist_backend: Optional[Literal["nccl", "gloo"]] = _help("Default: nccl on CUDA, gloo on CPU.", None)


@dataclass(frozen=True)
class KeySpec:
    """One configuration key: how to parse and check it."""

    name: str
    kind: str  # "bool" | "int" | "float" | "str" | "list" | "any"
    default: Any
    optional: bool
    choices: Optional[Tuple[Any, ...]] = None
    help: str = ""
    parser: Optional[Callable[[str], Any]] = None


def _spec_from_hint(name: str, hint: Any, default: Any, help_text: str) -> KeySpec:
    optional = False
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0]
        origin = typing.get_origin(hint)
    choices = None
    if origin is Literal:
        choices = typing.get_args(hint)
        kind = "str"
    elif origin in (list, List):
        kind = "list"
    else:
        kind = {bool: "bool", int: "int", float: "float", str: "str"}.get(hint, "any")
    return KeySpec(name, kind, default, optional, choices, help_text)


def base_specs() -> Dict[str, KeySpec]:
    """Specs of the common keys, from :class:`BaseConfig`."""
    hints = typing.get_type_hints(BaseConfig, include_extras=False)
    specs = {}
    for f in dataclasses.fields(BaseConfig):
        specs[f.name] = _spec_from_hint(f.name, hints[f.name], f.default, f.metadata.get("help", ""))
    return specs


def algorithm_specs(algorithm_cls: Any) -> Dict[str, KeySpec]:
    """Specs of an algorithm's own keys, from its ``get_argument()`` (USB's ``SSL_Argument`` list)."""
    specs = {}
    for arg in algorithm_cls.get_argument() or []:
        name = arg.name.lstrip("-").replace("-", "_")
        typ = arg.type
        if typ in (bool, int, float, str):
            kind, parser = {bool: "bool", int: "int", float: "float", str: "str"}[typ], None
        elif getattr(typ, "__name__", "") == "str2bool":
            kind, parser = "bool", None
        elif getattr(typ, "choices", None):
            specs[name] = KeySpec(name, "str", arg.default, False, tuple(typ.choices), arg.help or "")
            continue
        else:  # a callable parser, as argparse would use it
            kind, parser = "any", typ
        specs[name] = KeySpec(name, kind, arg.default, arg.default is None, None, arg.help or "", parser)
    return specs


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(text)


def coerce(spec: KeySpec, value: Any, source: str) -> Any:
    """Check ``value`` against ``spec``; strings (from the command line) are parsed first.

    Raises:
        ConfigError: naming the key, the expected type, the value and where it came from.
    """

    def fail(extra: str = "") -> ConfigError:
        want = spec.kind if spec.choices is None else "one of " + ", ".join(map(str, spec.choices))
        if spec.optional:
            want += " or none"
        return ConfigError(
            f"config key {spec.name!r} expects {want}, got {value!r} ({type(value).__name__}) from {source}{extra}"
        )

    if isinstance(value, str) and value.strip().lower() in _NONE_STRINGS and spec.kind != "str":
        value = None
    if isinstance(value, str) and spec.kind == "str" and spec.optional and value.strip().lower() in ("none", "null"):
        value = None
    if value is None:
        if spec.optional or spec.default is None:
            return None
        raise fail()
    try:
        if spec.parser is not None:
            return spec.parser(value) if isinstance(value, str) else value
        if spec.kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str):
                return _parse_bool(value)
            raise ValueError
        if spec.kind == "int":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, int):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                return int(value.strip())
            raise ValueError
        if spec.kind == "float":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, (int, float)):
                return float(value)
            if isinstance(value, str):
                return float(value.strip())
            raise ValueError
        if spec.kind == "str":
            if not isinstance(value, str):
                raise ValueError
            if spec.choices is not None and value not in spec.choices:
                raise fail(did_you_mean(value, [str(c) for c in spec.choices]))
            return value
        if spec.kind == "list":
            if isinstance(value, str):
                parsed = (
                    yaml.safe_load(value)
                    if value.strip().startswith("[")
                    else [v.strip() for v in value.split(",") if v.strip()]
                )
                value = parsed
            if isinstance(value, tuple):
                value = list(value)
            if not isinstance(value, list):
                raise ValueError
            return value
        return value  # "any"
    except ConfigError:
        raise
    except (ValueError, TypeError):
        raise fail() from None


def parse_cli_pairs(argv: Sequence[str]) -> Dict[str, str]:
    """Turn ``["--lr", "0.1", "--amp=true"]`` into ``{"lr": "0.1", "amp": "true"}``.

    Raises:
        ConfigError: for a token that is not ``--key`` or a key without a value.
    """
    out: Dict[str, str] = {}
    i = 0
    argv = list(argv)
    while i < len(argv):
        tok = argv[i]
        if not tok.startswith("--") or tok == "--":
            raise ConfigError(f"unexpected command-line argument {tok!r}: give options as --key value")
        key = tok[2:]
        if "=" in key:
            key, val = key.split("=", 1)
        else:
            if i + 1 >= len(argv) or (
                argv[i + 1].startswith("--") and len(argv[i + 1]) > 2 and not _is_number(argv[i + 1])
            ):
                raise ConfigError(
                    f"command-line option --{key} has no value: give --{key} VALUE "
                    f"(booleans as true/false, an absent value as none)"
                )
            val = argv[i + 1]
            i += 1
        out[key.replace("-", "_")] = val
        i += 1
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def load_yaml(path: str) -> Dict[str, Any]:
    """Read a YAML config file into a dict (empty file -> {})."""
    if not os.path.isfile(path):
        raise ConfigError(
            f"config file {path!r} does not exist (passed with --c); "
            f"configs live under config/, e.g. config/cfsg_cub.yaml"
        )
    with open(path, encoding="utf-8") as fh:
        try:
            data = yaml.safe_load(fh)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path!r} is not valid YAML: {' '.join(str(exc).split())}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"config file {path!r} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8 YAML"
            ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping of key: value, got {type(data).__name__}")
    return data


def _algorithm_class(name: str) -> Any:
    # keys (and our algorithms' rules) declared in usb_cfsg/algorithm_keys.py: no torch/semilearn
    # import; the class itself is imported on first use of anything else
    return algorithm_class(name)


def build_config(
    argv: Sequence[str] = (),
    config_file: Optional[str] = None,
    overrides: Optional[Dict[str, Any]] = None,
    extra_specs: Optional[Dict[str, KeySpec]] = None,
    validate: bool = True,
) -> argparse.Namespace:
    """Resolve a run's configuration: defaults < YAML < command line < ``overrides``.

    Everything that can be checked without reading data or building a model is checked here, in one
    error listing every problem: types and choices, ranges (``lr > 0``, ``sfm_keep_ratio`` in
    (0, 1], ...), combinations (``num_labels`` a multiple of ``num_classes``, ``rank < world_size``) and the algorithm's own rules (its ``validate_config`` classmethod, see
    :func:`validate_values`).

    Derived values (documented decisions):

    * ``save_name`` not given: USB's naming ``<algorithm>_<dataset>_<num_labels>_<seed>``, so two
      algorithms on the same data never share a run folder.
    * ``--algorithm`` on the command line replacing the config file's algorithm: the file's
      ``save_name`` and ``load_path`` name the file algorithm's run, so they are replaced by the
      default naming (with a notice) unless given on the command line too.
    * ``resume: true`` without ``load_path``: ``<save_dir>/<save_name>/latest_model.pth``, the run
      folder's own checkpoint. A ``load_path`` naming another checkpoint resumes from it only when
      given on the command line (or in ``overrides``); from a config file it is an error saying both ways on.
    * ``num_train_iter`` given on the command line (or in ``overrides``) without ``epoch``, and not
      divisible by the file's/default ``epoch``: ``epoch`` becomes the largest divisor of
      ``num_train_iter`` not above it, with a notice (USB users override ``num_train_iter`` for quick
      tries all the time). Both given explicitly and not divisible is an error.

    Args:
        argv: Command-line tokens (``--c FILE`` and ``--key value`` pairs).
        config_file: A YAML file, when not given as ``--c`` in ``argv``.
        overrides: Values applied last (already typed), e.g. from tests.
        extra_specs: Additional keys an entry point accepts (eval.py's ``out_dir``).
        validate: Run :func:`validate_config_values` (ranges, combinations, the algorithm's rules,
            which may import torch); False checks only keys and types (train.py's quick first pass).

    Returns:
        The resolved configuration as a Namespace (what USB algorithms read).

    Raises:
        ConfigError: unknown key, wrong type, value out of range, missing config file.
    """
    cli = parse_cli_pairs(argv)
    config_file = cli.pop("c", config_file)
    file_values = load_yaml(config_file) if config_file else {}
    overrides = dict(overrides or {})

    algorithm = overrides.get("algorithm", cli.get("algorithm", file_values.get("algorithm", BaseConfig.algorithm)))
    algorithm_cls = _algorithm_class(str(algorithm))
    specs = base_specs()
    specs.update(algorithm_specs(algorithm_cls))
    specs.update(extra_specs or {})

    explicit = set(cli) | set(overrides)
    file_values = _drop_other_algorithm_keys(file_values, str(algorithm), specs, config_file, explicit)
    values = {name: spec.default for name, spec in specs.items()}
    sources: Dict[str, str] = {}
    for source, given in (
        (f"config file {config_file}", file_values),
        ("the command line", cli),
        ("overrides", overrides),
    ):
        unknown = [key for key in given if key not in specs]
        if unknown:
            what = "; ".join(f"unknown config key {key!r}{did_you_mean(key, specs)}" for key in unknown)
            raise ConfigError(
                f"{what} (in {source}; algorithm {algorithm!r}; every key, its type and default: "
                f"python train.py --algorithm {algorithm} --help)"
            )
        for key, val in given.items():
            values[key] = coerce(specs[key], val, source)
            sources[key] = source

    expand_paths(values)
    _derive(values, explicit)
    ns = argparse.Namespace(**values)
    ns.c = config_file
    setattr(ns, SOURCES_ATTR, {k: sources.get(k, "the defaults") for k in values})
    if validate:
        validate_config_values(ns, algorithm_cls)
    return ns


def expand_paths(values: Dict[str, Any]) -> None:
    """Apply :data:`PATH_RULE` to the path keys of ``values`` in place: ``~`` expanded, relative kept relative.

    A relative path stays as given (so a saved ``config.yaml`` repeats the run from another checkout
    too): every reader opens it from the working folder, the rule's anchor.
    """
    for key in PATH_KEYS:
        if isinstance(values.get(key), str):
            values[key] = os.path.expanduser(values[key])


def validate_config_values(ns: argparse.Namespace, algorithm_cls: Any = None) -> None:
    """Raise one :class:`ConfigError` listing every problem :func:`validate_values` finds."""
    problems = validate_values(ns, algorithm_cls if algorithm_cls is not None else _algorithm_class(str(ns.algorithm)))
    if problems:
        sources = getattr(ns, SOURCES_ATTR, None) or {}
        raise ConfigError("invalid configuration: " + "; ".join(_blame(p, sources) for p in problems))


#: Namespace attribute holding where each key's value came from (not a config key; never saved).
SOURCES_ATTR = "config_sources"


def _blame(problem: str, sources: Dict[str, str]) -> str:
    """``problem`` with where the value of the key it starts with came from, e.g. ``(from the command line)``."""
    key = re.match(r"\w+", problem)
    source = sources.get(key.group(0)) if key else None
    return f"{problem} ({key.group(0)} from {source})" if key and source else problem


def default_save_name(values: Any) -> str:
    """USB's run naming: ``<algorithm>_<dataset>_<num_labels>_<seed>``."""
    get = values.get if isinstance(values, dict) else lambda k: getattr(values, k)
    return f"{get('algorithm')}_{get('dataset')}_{get('num_labels')}_{get('seed')}"


def _derive(values: Dict[str, Any], explicit: set) -> None:
    """Fill the derived values described in :func:`build_config` (in place)."""
    if values.get("use_pretrain") is False:
        values["pretrained"] = None
    if not values.get("save_name"):
        values["save_name"] = default_save_name(values)
    own = os.path.join(values["save_dir"], values["save_name"], "latest_model.pth")
    if values.get("resume") and not values.get("load_path"):
        values["load_path"] = own
    elif values.get("resume") and "load_path" not in explicit and not _same_path(values["load_path"], own):
        raise ConfigError(
            f"resume: the config file's load_path {values['load_path']!r} is not this run's checkpoint "
            f"({own!r}): to resume this run, drop load_path from the file; to continue from that other "
            f"run's checkpoint, give --load_path {values['load_path']} on the command line"
        )
    iters, epoch = values.get("num_train_iter"), values.get("epoch")
    if (
        isinstance(iters, int)
        and isinstance(epoch, int)
        and iters >= 1
        and epoch >= 1
        and iters % epoch
        and "num_train_iter" in explicit
        and "epoch" not in explicit
    ):
        new = max(d for d in range(1, epoch + 1) if iters % d == 0)
        logger.warning(
            "num_train_iter %d is not divisible by epoch %d: using epoch %d (the largest divisor of %d "
            "not above %d); give --epoch to choose another",
            iters,
            epoch,
            new,
            iters,
            epoch,
        )
        values["epoch"] = new
    warm = values.get("num_warmup_iter")
    if isinstance(iters, int) and isinstance(warm, int) and warm > iters >= 1:
        logger.warning(
            "num_warmup_iter %d exceeds num_train_iter %d: the learning rate rises linearly for the whole run",
            warm,
            iters,
        )


def _same_path(a: Any, b: str) -> bool:
    return os.path.abspath(os.path.expanduser(str(a))) == os.path.abspath(os.path.expanduser(b))


def algorithm_own_keys(algorithm: str) -> set:
    """The keys that belong to ``algorithm`` and cross to no other: dropped when a config is switched.

    Its own keys (``get_argument()``), not the common ones (e.g. ``num_tuned_blocks``, which shapes the
    backbone every algorithm shares): they tune that algorithm, even where another has a key of the
    same name (``ood_score``, ``p_cutoff``, ``lambda_*``), whose meaning and valid values differ. A
    common key the algorithm declares again with a default of its own (``zs_weight``: 0 for every
    algorithm, 0.5 for cfsg_clip) belongs to it too: a cfsg_clip file's ``zs_weight`` is cfsg_clip's
    choice, and ``--algorithm fixmatch`` on that file gets fixmatch's default unless given on the
    command line.
    """
    common = base_specs()
    own = algorithm_specs(_algorithm_class(algorithm))
    return {k for k, spec in own.items() if k not in common or spec.default != common[k].default}


def _drop_other_algorithm_keys(
    file_values: Dict[str, Any],
    algorithm: str,
    specs: Dict[str, KeySpec],
    config_file: Optional[str],
    explicit: Optional[set] = None,
) -> Dict[str, Any]:
    """Switching ``--algorithm`` on the command line keeps the YAML usable.

    Every key of the YAML's own algorithm (its ``get_argument()`` keys that are not common keys) is
    dropped with a logged notice, whether the chosen algorithm has a key of the same name or not:
    ``ood_score: energy`` of a cfsg_clip config never reaches clip_zeroshot, whose ``ood_score`` means
    another set of scores, and ``p_cutoff`` of cfsg_clip never becomes fixmatch's. Keys given on the
    command line (or in ``overrides``) are kept. Any other unknown key is still an error. The YAML's ``save_name`` and ``load_path`` belong to the YAML
    algorithm's run: unless given on the command line too, they are dropped (with a notice), so
    the default naming ``<algorithm>_<dataset>_<num_labels>_<seed>`` applies and the two runs never
    share a folder.
    """
    file_algorithm = file_values.get("algorithm")
    if not file_algorithm or file_algorithm == algorithm:
        return file_values
    explicit = explicit or set()
    own = algorithm_own_keys(str(file_algorithm))
    dropped = sorted(k for k in file_values if k in own)  # a command-line value replaces the file's anyway
    told = [k for k in dropped if k not in explicit]
    if told:
        same = [k for k in told if k in specs]
        logger.warning(
            "algorithm %s (command line) replaces %s (%s): ignoring the %s keys %s%s",
            algorithm,
            file_algorithm,
            config_file,
            file_algorithm,
            ", ".join(told),
            f" ({algorithm}'s defaults apply to {', '.join(same)}; give --key value to set them)" if same else "",
        )
    naming = [k for k in ("save_name", "load_path") if file_values.get(k) and k not in explicit]
    if naming:
        logger.warning(
            "algorithm %s (command line) replaces %s (%s): not using the file's %s, which name the %s "
            "run; the run folder is <save_dir>/<algorithm>_<dataset>_<num_labels>_<seed> unless "
            "--save_name is given",
            algorithm,
            file_algorithm,
            config_file,
            " and ".join(naming),
            file_algorithm,
        )
    return {k: v for k, v in file_values.items() if k not in dropped and k not in naming}


#: Ranges of the common keys (BaseConfig).
BASE_RANGES: Tuple[Tuple[str, str], ...] = (
    ("num_train_iter", "[0, inf)"),
    ("cache_budget_gb", "[0, inf)"),
    ("epoch", "[1, inf)"),
    ("num_eval_iter", "[1, inf)"),
    ("num_log_iter", "[1, inf)"),
    ("num_warmup_iter", "[0, inf)"),
    ("num_labels", "[1, inf)"),
    ("batch_size", "[1, inf)"),
    ("uratio", "[1, inf)"),
    ("eval_batch_size", "[1, inf)"),
    ("ema_m", "[0, 1]"),
    ("ulb_loss_ratio", "[0, inf)"),
    ("lr", "(0, inf)"),
    ("momentum", "[0, 1)"),
    ("weight_decay", "[0, inf)"),
    ("layer_decay", "(0, 1]"),
    ("clip_grad", "[0, inf)"),
    ("max_bad_steps", "[1, inf)"),
    ("energy_temperature", "(0, inf)"),
    ("zs_weight", "[0, 1]"),
    ("num_tuned_blocks", "[0, inf)"),
    ("num_classes", "[1, inf)"),
    ("num_workers", "[0, inf)"),
    ("img_size", "[1, inf)"),
    ("crop_ratio", "(0, 1]"),
    ("split_seed", "[0, inf)"),
    ("ulb_unseen_ratio", "[0, 1]"),
    ("scene_size", "[16, inf)"),
    ("scene_fragments", "[0, inf)"),
    ("scene_seed", "[0, inf)"),
    ("badge_size", "[2, inf)"),
    ("ood_threshold", "(-inf, inf)"),
    ("threshold_tpr", "(0, 1]"),
    ("eval_subset", "[0, inf)"),
    ("seed", "[0, inf)"),
    ("gpu", "[0, inf)"),
    ("world_size", "[1, inf)"),
    ("rank", "[0, inf)"),
)

#: Ranges of keys that USB's own algorithms define in get_argument() (checked when the algorithm has them).
USB_ALGORITHM_RANGES: Tuple[Tuple[str, str], ...] = (
    ("p_cutoff", "[0, 1]"),
    ("T", "(0, inf)"),
    ("ema_p", "[0, 1]"),
    ("unsup_warm_up", "[0, inf)"),
)


#: Algorithms whose items (USB's ``BasicDataset.__getitem__``) hold views other than USB's default weak
#: labeled view and (weak, strong) unlabeled pair, which ``augment_device`` does not make
RAW_VIEWS_UNSUPPORTED = ("pimodel", "meanteacher", "mixmatch", "remixmatch", "comatch", "defixmatch")


def augment_device_problems(args: argparse.Namespace) -> List[str]:
    """Why ``augment_device`` cannot be used with this configuration (empty when it can)."""
    device = str(getattr(args, "augment_device", "none"))
    if device == "none":
        return []
    alg = str(getattr(args, "algorithm", ""))
    if alg in RAW_VIEWS_UNSUPPORTED:
        return [
            f"augment_device: {device} makes USB's default views (weak labeled; weak and strong unlabeled), but "
            f"{alg} uses other views (see USB's BasicDataset): set augment_device: none"
        ]
    if device == "cuda" and str(getattr(args, "device", "auto")) == "cpu":
        return ["augment_device: cuda needs the training device on CUDA, got device: cpu; set augment_device: cpu"]
    return []


def _zero_shot_problems(args: argparse.Namespace) -> List[str]:
    """Why ``zs_weight`` > 0 cannot be kept: no CLIP net, no CLIP text tower, or no pretrained weights."""
    weight = getattr(args, "zs_weight", 0.0)
    if not isinstance(weight, (int, float)) or not weight > 0 or getattr(args, "algorithm", None) == "clip_zeroshot":
        return []
    net = str(getattr(args, "net", ""))
    why = []
    if not (net == "open_clip" or net.startswith("clip_")):
        why.append(f"net {net} is not one of our CLIP nets (clip_vit_b16, ..., open_clip)")
    if getattr(args, "text_encoder", "clip") != "clip":
        why.append("text_encoder minilm has no zero-shot classifier (its embeddings pass a random projection)")
    if getattr(args, "pretrained", None) in (None, "", "none") and not getattr(args, "pretrain_path", None):
        why.append("a randomly initialised CLIP (pretrained: none, no pretrain_path) has no zero-shot classifier")
    if not why:
        return []
    return [
        f"zs_weight {weight} keeps the pretrained CLIP's zero-shot classifier, but {'; '.join(why)}: set zs_weight: 0"
    ]


def validate_values(args: argparse.Namespace, algorithm_cls: Any = None) -> List[str]:
    """Every problem of a resolved configuration that can be found without data or a model.

    Checks the common keys (:data:`BASE_RANGES` and combinations), the keys of USB's algorithms
    (:data:`USB_ALGORITHM_RANGES`), then calls ``algorithm_cls.validate_config(args)`` when the
    algorithm defines it (a classmethod returning a list of problem strings; our PluginMixin
    provides the default, which returns none).

    Returns:
        Problem messages; empty when the configuration is valid.
    """
    problems = check_ranges(args, BASE_RANGES) + check_ranges(args, USB_ALGORITHM_RANGES)
    get = lambda k: getattr(args, k, None)  # noqa: E731
    iters, epoch = get("num_train_iter"), get("epoch")
    if isinstance(iters, int) and isinstance(epoch, int) and iters >= 1 and epoch >= 1 and iters % epoch:
        problems.append(
            f"num_train_iter ({iters}) must be divisible by epoch ({epoch}); e.g. set epoch: "
            f"{max(d for d in range(1, epoch + 1) if iters % d == 0)}"
        )
    k, labels = get("num_classes"), get("num_labels")
    if isinstance(k, int) and isinstance(labels, int) and k >= 1 and labels >= 1 and labels % k:
        problems.append(
            f"num_labels ({labels}) must be a positive multiple of num_classes ({k}), so that every "
            f"seen class gets the same number of labels; e.g. {k * max(1, labels // k)}"
        )
    sha = get("demo_clip_sha256")
    if isinstance(sha, str) and not re.fullmatch(r"[0-9a-f]{64}", sha):
        problems.append(
            f"demo_clip_sha256 must be 64 lowercase hex digits (a demo CLIP card's sha256) or none, got {sha!r}"
        )
    rank, world = get("rank"), get("world_size")
    if isinstance(rank, int) and isinstance(world, int) and world >= 1 and rank >= world:
        problems.append(f"rank ({rank}) must be below world_size ({world})")
    name = get("save_name")
    if isinstance(name, str) and (name.strip() in ("", ".", "..") or name != name.strip()):
        problems.append(f"save_name {name!r} is not a folder name; e.g. {default_save_name(args)!r}")
    problems.extend(_zero_shot_problems(args))
    problems.extend(augment_device_problems(args))
    if algorithm_cls is not None and hasattr(algorithm_cls, "validate_config"):
        own = algorithm_cls.validate_config(args)
        problems.extend(own or [])
    if problems:  # the net check below imports open_clip and torch (seconds): report these first, at once
        return problems
    net, clip_model = get("net"), get("clip_model")
    if isinstance(net, str) and (net == "open_clip" or net.startswith("clip_") or clip_model not in (None, "", "none")):
        from .nets.clip import CLIP_ARCHS, GENERIC_NET, validate_clip_model  # our CLIP nets: model, tower, tag

        if net == GENERIC_NET or net in CLIP_ARCHS:
            try:
                validate_clip_model(net, clip_model, get("pretrained"), get("pretrain_path"))
            except ConfigError as exc:
                problems.append(str(exc))
        elif clip_model not in (None, "", "none"):
            problems.append(f"clip_model is read only with net: open_clip, got net: {net}")
    return problems


def config_to_dict(args: argparse.Namespace) -> Dict[str, Any]:
    """Plain-Python dict of a resolved config's keys (what config.yaml and checkpoints store).

    ``python train.py --c <run>/config.yaml`` reproduces the run.
    """
    keys = set(base_specs()) | set(algorithm_specs(_algorithm_class(str(args.algorithm))))
    out: Dict[str, Any] = {}
    for key, val in sorted(vars(args).items()):
        if key not in keys:  # runtime values (c, distributed, lb_dest_len, ...) are not configuration
            continue
        if isinstance(val, (bool, int, float, str)) or val is None:
            out[key] = val
        elif isinstance(val, (list, tuple)):
            out[key] = [v if isinstance(v, (bool, int, float, str)) else str(v) for v in val]
    return out


#: Keys that describe one invocation (how it was started), not the run; see :func:`run_config_dict`.
INVOCATION_KEYS = ("resume", "resume_extend", "load_path")


def run_config_dict(args: argparse.Namespace) -> Dict[str, Any]:
    """The run's configuration, as ``config.yaml`` stores it.

    Like :func:`config_to_dict`, with the invocation keys normalised: ``resume: false``,
    ``resume_extend: false`` and no ``load_path`` (a resume defaults to the run folder's own
    ``latest_model.pth``). So ``python train.py --c <run>/config.yaml`` repeats the run from the start
    (into the same folder under the run's ``overwrite``), and adding ``--resume true`` continues it,
    whatever the invocation that wrote the file was; with another ``--save_dir``/``--save_name`` it
    never picks up this run's checkpoint.
    """
    out = config_to_dict(args)
    out["resume"] = False
    out["resume_extend"] = False
    out.pop("load_path", None)
    return out


def save_config(args: argparse.Namespace, path: str) -> None:
    """Write the run's configuration (:func:`run_config_dict`) as YAML, atomically."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        yaml.safe_dump(run_config_dict(args), fh, sort_keys=True)
    os.replace(tmp, path)


def format_config(args: argparse.Namespace) -> str:
    """The keys whose value differs from its default, as ``key: value`` lines, for the console and the log.

    The run's ``config.yaml`` holds every key; the log shows what this run chose.
    """
    specs = {**base_specs(), **algorithm_specs(_algorithm_class(str(args.algorithm)))}
    return "\n".join(f"  {k}: {v}" for k, v in config_to_dict(args).items() if k not in specs or v != specs[k].default)


def describe_keys(algorithm: str) -> str:
    """Every key ``algorithm`` accepts, with type, default and help, for ``train.py --help``."""
    specs = base_specs()
    own = algorithm_specs(_algorithm_class(algorithm))
    lines = [PATH_RULE, ""]
    for title, group in (
        ("common keys", {k: v for k, v in specs.items() if k not in own}),
        (f"keys of algorithm {algorithm!r}", own),
    ):
        lines.append(f"{title}:")
        for spec in group.values():
            kind = "|".join(map(str, spec.choices)) if spec.choices else spec.kind
            lines.append(
                f"  --{spec.name} {kind.upper() if not spec.choices else kind} (default {spec.default!r})  {spec.help}"
            )
    return "\n".join(lines)
