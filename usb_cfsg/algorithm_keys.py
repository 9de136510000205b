"""Every algorithm's config keys, declared in one light module that the classes and config.py both read.

Reading keys from an algorithm class (its ``get_argument()``) means importing torch and semilearn:
about 6 s on a 2-core machine. ``train.py --help``, unknown-key, type and range errors need only the
keys, so they are declared here, as data, with nothing but the standard library imported:

* **Our algorithms** declare their keys in :data:`ALGORITHMS`, one entry per algorithm: a tuple of
  :class:`Key` (name, type, default, help, ``choices``, ``range``) and an optional ``check`` function
  for rules over several keys. The class reads the same entry: its ``get_argument()`` is
  ``usb_cfsg.algorithms.ssl_arguments("<name>")`` and its ``validate_config`` is
  ``usb_cfsg.algorithms.declared_problems("<name>", args)``. **To add a key to an algorithm, add one**
  ``Key(...)`` **to its entry here** (and read ``args.<key>`` in the class); nothing is generated.
* **USB's own algorithms** (fixmatch, ...) keep their keys in semilearn. semilearn is pinned to
  :data:`USB_VERSION`; :data:`USB_ALGORITHMS` lists that release's keys (a test compares them with the
  installed classes). With any other semilearn version installed the classes are imported instead.

:func:`declared` returns a light stand-in class for a name (``get_argument()`` and, for ours,
``validate_config``); anything else asked of the stand-in imports the real class.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .unknown_scores import score_names

#: the semilearn release whose algorithms' keys :data:`USB_ALGORITHMS` lists
USB_VERSION = "0.3.2"

_KINDS = ("bool", "int", "float", "str")


@dataclass(frozen=True)
class Key:
    """One algorithm key, as ``get_argument()`` gives it to USB and config.py validates it.

    Args:
        name: The key, without dashes (``sfm_keep_ratio``).
        type: ``bool``, ``int``, ``float`` or ``str``.
        default: Its default value.
        help: One line for ``train.py --help`` and the README's key table.
        choices: For a ``str`` key, the values allowed.
        range: For a number, the interval it must lie in, as text: ``"(0, 1]"``, ``"[0, inf)"``.
    """

    name: str
    type: str
    default: Any
    help: str = ""
    choices: Optional[Tuple[str, ...]] = None
    range: Optional[str] = None

    def __post_init__(self) -> None:
        if self.type not in _KINDS:
            raise ValueError(f"Key {self.name!r}: type {self.type!r} is not one of {', '.join(_KINDS)}")


@dataclass(frozen=True)
class AlgorithmKeys:
    """An algorithm's declared keys and its rules over several keys.

    Args:
        keys: Its own keys, in ``get_argument()`` order.
        check: ``check(args) -> problems`` for rules the per-key ranges cannot say (may be None).
    """

    keys: Tuple[Key, ...]
    check: Optional[Callable[[Any], List[str]]] = None


def _str2bool(text: Any) -> bool:  # named like semilearn's, which config.algorithm_specs recognises
    if isinstance(text, bool):
        return text
    low = str(text).strip().lower()
    if low in ("true", "yes", "t", "y", "1"):
        return True
    if low in ("false", "no", "f", "n", "0"):
        return False
    raise ValueError(text)


_str2bool.__name__ = "str2bool"


def one_of(*options: str) -> Callable[[str], str]:
    """An argparse ``type`` accepting only ``options``, for ``SSL_Argument``s of algorithm keys.

    Its ``choices`` attribute is what config.py turns into a validated choice (with "did you
    mean" errors and the choices listed in ``--help`` and the README's key table).
    """

    def parse(text: str) -> str:
        if text not in options:
            raise ValueError(f"expected one of {options}, got {text!r}")
        return text

    parse.__name__ = "one of " + "|".join(options)
    parse.choices = options  # type: ignore[attr-defined]
    return parse


_INTERVAL = re.compile(r"^\s*([\[(])\s*([^,]+?)\s*,\s*([^\])]+?)\s*([\])])\s*$")


def check_ranges(args: Any, rules: Sequence[Tuple[str, str]]) -> List[str]:
    """Check numeric keys against intervals written as text; returns the problems found.

    Args:
        args: The configuration (Namespace or dict); keys it lacks, or whose value is None, are skipped.
        rules: ``(key, interval)`` pairs, e.g. ``("sfm_keep_ratio", "(0, 1]")`` or ``("lr", "(0, inf)")``.
            Every checked value must also be finite.

    Returns:
        One message per violated rule, e.g. ``"sfm_keep_ratio must be in (0, 1], got 1.5"``.
    """
    get = args.get if isinstance(args, dict) else (lambda k, d=None: getattr(args, k, d))
    problems = []
    for key, interval in rules:
        value = get(key, None)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        match = _INTERVAL.match(interval)
        if match is None:
            raise ValueError(f"bad interval {interval!r} for {key!r}")
        lo_b, lo, hi, hi_b = match.groups()
        lo_v, hi_v = float(lo), float(hi)
        ok = math.isfinite(value)
        ok = ok and (value > lo_v if lo_b == "(" else value >= lo_v)
        ok = ok and (value < hi_v if hi_b == ")" else value <= hi_v)
        if not ok:
            problems.append(f"{key} must be in {interval}, got {value!r}")
    return problems


# ------------------------------------------------------------------------------- our algorithms
def _get(args: Any, key: str) -> Any:
    return args.get(key) if isinstance(args, dict) else getattr(args, key, None)


def _cfsg_clip_check(args: Any) -> List[str]:
    topk, k = _get(args, "vsi_topk"), _get(args, "num_classes")
    if isinstance(topk, int) and isinstance(k, int) and topk > k >= 1:
        return [
            f"vsi_topk ({topk}) must not exceed num_classes ({k}): the cues come from the top-k "
            f"seen classes; e.g. vsi_topk: {min(3, k)}"
        ]
    return []


def _openmatch_check(args: Any) -> List[str]:
    problems = []
    start_fix, interval = _get(args, "start_fix"), _get(args, "select_interval")
    if isinstance(start_fix, int) and start_fix < -1:
        problems.append(f"start_fix must be >= 0 iterations or -1 (auto), got {start_fix}")
    if isinstance(interval, int) and (interval == 0 or interval < -1):
        problems.append(f"select_interval must be >= 1 iteration or -1 (auto), got {interval}")
    return problems


def _iomatch_check(args: Any) -> List[str]:
    op_start = _get(args, "op_start")
    if isinstance(op_start, int) and op_start < -1:
        return [f"op_start must be >= 0 iterations or -1 (auto), got {op_start}"]
    return []


#: cfsg_clip's unknown scores (declared in :mod:`usb_cfsg.unknown_scores`)
CFSG_OOD_SCORES = score_names("cfsg_clip")
#: clip_zeroshot's unknown scores (mcm and glmcm from the net, msp and energy from its logits)
ZS_SCORES = score_names("clip_zeroshot")
#: kinds of dense patch features (``usb_cfsg.nets.backbone.DENSE_KINDS``; a test keeps the two equal)
DENSE_KINDS = ("glmcm", "value")
#: rules of the SFM's relevance (``usb_cfsg.modules.semantic_filter.RELEVANCE_RULES``; a test keeps the two equal)
RELEVANCE_RULES = ("patches", "classes", "contrastive")
#: ``vsi_inject`` values: the VSI cues enter the fine branch's first tuned block, or every one (deep prompts)
VSI_INJECT = ("input", "deep")
#: ``fine_blocks`` values: the fine branch's tuned blocks are the coarse branch's, a trainable copy, or a frozen one
FINE_BLOCKS = ("shared", "separate", "frozen")
#: ``sfm_oracle`` values (``usb_cfsg.nets.oracle.ORACLE_MODES``; a test keeps the two equal)
ORACLE_MODES = ("none", "mark", "random", "anti")
_OVA_LOG_EPS_HELP = "eps of log(softmax + eps) in the OVA losses, as the authors' code; 0 = exact log_softmax"
_GLMCM_LOCAL_HELP = "local features of the glmcm score: glmcm (as GL-MCM's code) or value (MaskCLIP value path)"
#: cfsg_clip's unlabeled views of the OVA terms
OVA_VIEWS = ("weak_weak", "weak_strong")

#: Our algorithms' keys. An algorithm declares its keys here (see the module docstring).
ALGORITHMS: Dict[str, AlgorithmKeys] = {
    "cfsg_clip": AlgorithmKeys(
        (
            Key("num_tuned_blocks", "int", 4, "trainable last visual blocks m", range="[0, inf)"),
            Key(
                "text_encoder",
                "str",
                "clip",
                "class-name embeddings: CLIP text tower or offline MiniLM + learned projection",
                choices=("clip", "minilm"),
            ),
            Key("use_sfm", "bool", True, "semantic filtering module in the coarse branch"),
            Key("use_vsi", "bool", True, "visual-semantic injection cue tokens in the fine branch"),
            Key("sfm_keep_ratio", "float", 0.25, "rho: fraction of patches kept by the SFM", range="(0, 1]"),
            Key(
                "sfm_temperature",
                "float",
                0.07,
                "tau_f: patch-class affinity softmax temperature",
                range="(0, inf)",
            ),
            Key(
                "sfm_posterior_scale",
                "float",
                100.0,
                "s of the SFM class posterior softmax(s cos(g, t)); 100 = CLIP's zero-shot scale",
            ),
            Key(
                "sfm_local_weight",
                "float",
                1.0,
                "lambda_f: weight of the local feature in z_c",
                range="[0, inf)",
            ),
            Key(
                "sfm_dense",
                "str",
                "glmcm",
                "patch features of the affinity: glmcm (GL-MCM's local features: value path + residual + MLP, "
                "shared with the glmcm score), value (MaskCLIP's value path alone) or final tokens",
                choices=DENSE_KINDS + ("tokens",),
            ),
            Key(
                "sfm_relevance",
                "str",
                "patches",
                "axis of the SFM's affinity softmax: patches (share of each class's evidence per patch), "
                "classes (each patch's class posterior, renormalised: empty or ambiguous patches lose) or "
                "contrastive (patches, on the affinity minus its mean over classes: what separates a class)",
                choices=RELEVANCE_RULES,
            ),
            Key(
                "sfm_scales",
                "str",
                "fixed",
                "the SFM's posterior scale and patch temperature: fixed (sfm_posterior_scale, sfm_temperature) "
                "or clip (the CLIP checkpoint's own logit scale s and 1/s)",
                choices=("fixed", "clip"),
            ),
            Key(
                "sfm_filter",
                "str",
                "hard",
                "how the SFM's selection reaches the fine branch: hard (drop the unkept patches, fine_tokens) or "
                "soft (every patch, attention biased by log(N r_i): nothing dropped, the fine loss trains the relevance)",
                choices=("hard", "soft"),
            ),
            Key(
                "sfm_oracle",
                "str",
                "none",
                "control: keep the patches showing the mark (mark, filled up by relevance), random ones, or the "
                "most relevant patches without the mark (anti) instead of the SFM's choice (fmnist_badged)",
                choices=ORACLE_MODES,
            ),
            Key("vsi_topk", "int", 3, "k: cue tokens from the top-k coarse classes", range="[1, inf)"),
            Key(
                "vsi_cues",
                "str",
                "prototypes",
                "visual part of the VSI cues: class prototypes (EMA of labeled and selected unlabeled local "
                "features), labeled (prototypes of labeled samples only) or own (the image's own local feature)",
                choices=("prototypes", "labeled", "own"),
            ),
            Key(
                "vsi_inject",
                "str",
                "input",
                "where the VSI cues enter the fine branch: input (its first tuned block) or deep (every tuned "
                "block gets its own projection of the cues, as VPT-deep / MaPLe prompts)",
                choices=VSI_INJECT,
            ),
            Key(
                "fine_blocks",
                "str",
                "shared",
                "the fine branch's tuned blocks: shared with the coarse branch, separate (a trainable copy of "
                "the pretrained ones; with layer_decay < 1 it trains at the head's lr) or frozen (a frozen "
                "copy: cues and heads learn, as prompts into a frozen encoder)",
                choices=FINE_BLOCKS,
            ),
            Key("proto_momentum", "float", 0.99, "EMA momentum of the class prototypes", range="[0, 1]"),
            Key(
                "closed_head",
                "str",
                "ensemble",
                "closed-set prediction: (coarse + fine) / 2, or fine only",
                choices=("ensemble", "fine"),
            ),
            Key(
                "fine_tokens",
                "str",
                "kept",
                "patch tokens of the fine branch with the SFM: the kept ones (kept) or every patch (all)",
                choices=("kept", "all"),
            ),
            Key(
                "mcm_temperature",
                "float",
                1.0,
                "T of the MCM / GL-MCM scores (1, as both papers)",
                range="(0, inf)",
            ),
            Key("glmcm_local", "str", "glmcm", _GLMCM_LOCAL_HELP, choices=DENSE_KINDS),
            Key("ova_bias", "bool", False, "bias in the OVA head's linear layer (OpenMatch: none)"),
            Key(
                "ova_views",
                "str",
                "weak_strong",
                "unlabeled views of the OVA entropy/consistency: weak and strong (no extra forward) or "
                "two weak (OpenMatch, one more unlabeled forward per step)",
                choices=OVA_VIEWS,
            ),
            Key(
                "zs_weight",
                "float",
                0.5,
                "alpha of the closed prediction (1 - alpha) trained + alpha zero-shot: the frozen pretrained "
                "CLIP classifier kept in an output ensemble; 0 = trained heads only",
                range="[0, 1]",
            ),
            Key("ova_log_eps", "float", 1e-8, _OVA_LOG_EPS_HELP, range="[0, 1)"),
            Key("lambda_ova", "float", 1.0, "weight of the labeled OVA loss", range="[0, inf)"),
            Key(
                "lambda_em",
                "float",
                0.1,
                "weight of OVA entropy minimisation on unlabeled data",
                range="[0, inf)",
            ),
            Key(
                "lambda_socr",
                "float",
                0.5,
                "weight of OVA consistency between the two views",
                range="[0, inf)",
            ),
            Key(
                "lambda_fix",
                "float",
                1.0,
                "weight of the FixMatch term on selected inliers",
                range="[0, inf)",
            ),
            Key("p_cutoff", "float", 0.95, "confidence threshold of pseudo-labels", range="[0, 1]"),
            Key(
                "pseudo_labels",
                "str",
                "ensemble",
                "the weak views' prediction that gives the pseudo-labels and their confidence: ensemble (the "
                "closed prediction, with the zero-shot prior when zs_weight > 0) or trained (the trained heads "
                "alone: a prior blind to the classes' detail cannot hold the confidence below p_cutoff)",
                choices=("ensemble", "trained"),
            ),
            Key(
                "ood_threshold",
                "float",
                0.5,
                "OVA unknown score below which a sample is an inlier",
                range="[0, 1]",
            ),
            Key("start_fix", "int", 0, "iterations before the FixMatch term starts", range="[0, inf)"),
            Key(
                "ood_score",
                "str",
                "energy",
                "primary unknown score; energy = -logsumexp of the closed logits; fused = mean of ova and "
                "glmcm on ranges fitted on training data",
                choices=CFSG_OOD_SCORES,
            ),
        ),
        check=_cfsg_clip_check,
    ),
    "openmatch": AlgorithmKeys(
        (
            Key("lambda_ova", "float", 1.0, "weight of the labeled OVA loss (OpenMatch: 1)", range="[0, inf)"),
            Key("ova_log_eps", "float", 1e-8, _OVA_LOG_EPS_HELP, range="[0, 1)"),
            Key(
                "lambda_em",
                "float",
                0.1,
                "weight of open-set entropy minimisation (OpenMatch lambda_oem: 0.1)",
                range="[0, inf)",
            ),
            Key(
                "lambda_socr",
                "float",
                0.5,
                "weight of soft open-set consistency (OpenMatch: 0.5 CIFAR-10/ImageNet, 1.0 CIFAR-100)",
                range="[0, inf)",
            ),
            Key(
                "lambda_fix",
                "float",
                1.0,
                "weight of the FixMatch term on selected inliers (OpenMatch: 1)",
                range="[0, inf)",
            ),
            Key("p_cutoff", "float", 0.0, "pseudo-label confidence threshold (OpenMatch: 0.0)", range="[0, 1]"),
            Key("T", "float", 1.0, "pseudo-label softmax temperature (OpenMatch: 1)", range="(0, inf)"),
            Key(
                "start_fix",
                "int",
                -1,
                "iterations before FixMatch and the inlier selection start; -1 = 10/512 of num_train_iter "
                "(OpenMatch: epoch 10 of 512)",
            ),
            Key(
                "select_interval",
                "int",
                -1,
                "iterations between inlier selections over the whole unlabeled set; -1 = one pass over "
                "the unlabeled set (OpenMatch: once per epoch)",
            ),
            Key(
                "select_threshold",
                "float",
                0.5,
                "an unlabeled image is a selected inlier when p_neg(y_hat) < this (OpenMatch: 0.5)",
                range="(0, 1]",
            ),
        ),
        check=_openmatch_check,
    ),
    "iomatch": AlgorithmKeys(
        (
            Key(
                "p_cutoff",
                "float",
                0.95,
                "closed-set pseudo-label confidence threshold tau_p (IOMatch: 0.95)",
                range="[0, 1]",
            ),
            Key(
                "q_cutoff",
                "float",
                0.5,
                "open-set target confidence threshold tau_q (IOMatch: 0.5)",
                range="[0, 1]",
            ),
            Key("ova_log_eps", "float", 1e-8, _OVA_LOG_EPS_HELP, range="[0, 1)"),
            Key(
                "mb_loss_ratio",
                "float",
                1.0,
                "weight of the labeled multi-binary loss (IOMatch: 1)",
                range="[0, inf)",
            ),
            Key("op_loss_ratio", "float", 1.0, "weight of the open-set loss L_op (IOMatch: 1)", range="[0, inf)"),
            Key(
                "op_start",
                "int",
                -1,
                "iterations before L_op starts; -1 = num_train_iter/256 (IOMatch: after the first of 256 epochs)",
            ),
            Key(
                "dist_align",
                "bool",
                True,
                "distribution alignment of the closed-set pseudo-labels to a uniform prior (IOMatch: on; "
                "its CIFAR-10 configs turn it off)",
            ),
            Key("da_len", "int", 128, "queue length of the distribution alignment (IOMatch: 128)", range="[1, inf)"),
            Key("proj_dim", "int", 128, "output size of the projection head (IOMatch: 128)", range="[1, inf)"),
        ),
        check=_iomatch_check,
    ),
    "clip_zeroshot": AlgorithmKeys(
        (
            Key(
                "mcm_temperature",
                "float",
                1.0,
                "T of the MCM / GL-MCM softmax (both papers: 1)",
                range="(0, inf)",
            ),
            Key("glmcm_local", "str", "glmcm", _GLMCM_LOCAL_HELP, choices=DENSE_KINDS),
            Key(
                "ood_score",
                "str",
                "mcm",
                "headline unknown score: mcm, glmcm, or msp / energy of the zero-shot logits at the heads' scale 30",
                choices=ZS_SCORES,
            ),
        ),
    ),
}

#: semilearn 0.3.2's algorithms and their ``get_argument()`` keys (USB's own files, unchanged since that
#: release; used only when that version is installed, see :func:`usb_version_installed`)
USB_ALGORITHMS: Dict[str, Tuple[Key, ...]] = {
    "adamatch": (
        Key("hard_label", "bool", True),
        Key("T", "float", 0.5),
        Key("ema_p", "float", 0.999),
        Key("p_cutoff", "float", 0.95),
    ),
    "comatch": (
        Key("hard_label", "bool", True),
        Key("T", "float", 0.5),
        Key("p_cutoff", "float", 0.95),
        Key("contrast_p_cutoff", "float", 0.8),
        Key("contrast_loss_ratio", "float", 1.0),
        Key("proj_size", "int", 128),
        Key("queue_batch", "int", 128),
        Key("smoothing_alpha", "float", 0.9),
        Key("da_len", "int", 256),
    ),
    "crmatch": (
        Key("hard_label", "bool", True),
        Key("rot_loss_ratio", "float", 1.0, "weight for rot loss, set to 0 for nlp and speech"),
        Key("p_cutoff", "float", 0.95),
    ),
    "dash": (
        Key("T", "float", 0.5),
        Key("gamma", "float", 1.27),
        Key("C", "float", 1.0001),
        Key("rho_min", "float", 0.05),
        Key("num_wu_iter", "int", 2048),
        Key("num_wu_eval_iter", "int", 100),
    ),
    "defixmatch": (
        Key("hard_label", "bool", True),
        Key("T", "float", 0.5),
        Key("p_cutoff", "float", 0.95),
    ),
    "fixmatch": (
        Key("hard_label", "bool", True),
        Key("T", "float", 0.5),
        Key("p_cutoff", "float", 0.95),
    ),
    "flexmatch": (
        Key("hard_label", "bool", True),
        Key("T", "float", 0.5),
        Key("p_cutoff", "float", 0.95),
        Key("thresh_warmup", "bool", True),
    ),
    "freematch": (
        Key("hard_label", "bool", True),
        Key("T", "float", 0.5),
        Key("ema_p", "float", 0.999),
        Key("ent_loss_ratio", "float", 0.01),
        Key("use_quantile", "bool", False),
        Key("clip_thresh", "bool", False),
    ),
    "fullysupervised": (),
    "meanteacher": (Key("unsup_warm_up", "float", 0.4, "warm up ratio for unsupervised loss"),),
    "mixmatch": (
        Key("T", "float", 0.5, "parameter for Temperature Sharpening"),
        Key("unsup_warm_up", "float", 0.015625, "ramp up ratio for unsupervised loss"),
        Key("mixup_alpha", "float", 0.5, "parameter for Beta distribution of Mix Up"),
        Key("mixup_manifold", "bool", False, "use manifold mixup (for nlp)"),
    ),
    "pimodel": (Key("unsup_warm_up", "float", 0.4, "warm up ratio for unsupervised loss"),),
    "pseudolabel": (
        Key("p_cutoff", "float", 0.95),
        Key("unsup_warm_up", "float", 0.4, "warm up ratio for unsupervised loss"),
    ),
    "remixmatch": (
        Key("T", "float", 0.5, "Temperature Sharpening"),
        Key("kl_loss_ratio", "float", 0.5, "weight for KL loss"),
        Key("rot_loss_ratio", "float", 0.5, "weight for rot loss, set to 0 for nlp and speech"),
        Key("unsup_warm_up", "float", 0.015625),
        Key("mixup_alpha", "float", 0.75, "param for Beta distribution of Mix Up"),
        Key("mixup_manifold", "bool", False, "use manifold mixup (for nlp)"),
    ),
    "simmatch": (
        Key("T", "float", 0.5),
        Key("p_cutoff", "float", 0.95),
        Key("proj_size", "int", 128),
        Key("K", "int", 128),
        Key("in_loss_ratio", "float", 1.0),
        Key("smoothing_alpha", "float", 0.9),
        Key("da_len", "int", 256),
    ),
    "softmatch": (
        Key("hard_label", "bool", True),
        Key("T", "float", 0.5),
        Key("dist_align", "bool", True),
        Key("dist_uniform", "bool", True),
        Key("ema_p", "float", 0.999),
        Key("n_sigma", "int", 2),
        Key("per_class", "bool", False),
    ),
    "supervised": (),
    "uda": (
        Key("tsa_schedule", "str", "none", "TSA mode: none, linear, log, exp"),
        Key("T", "float", 0.4, "Temperature sharpening"),
        Key("p_cutoff", "float", 0.8, "confidential masking threshold"),
    ),
    "vat": (
        Key("ent_loss_ratio", "float", 0.06, "Entropy minimization weight"),
        Key("vat_eps", "float", 6, "VAT perturbation size."),
        Key("vat_embed", "bool", False, "use word embedding for vat, specified for nlp"),
        Key("unsup_warm_up", "float", 0.4, "warm up ratio for unsupervised loss"),
    ),
}


def usb_version_installed() -> bool:
    """Whether the installed semilearn is :data:`USB_VERSION` (read from its metadata, nothing imported)."""
    from importlib import metadata

    try:
        return metadata.version("semilearn") == USB_VERSION
    except metadata.PackageNotFoundError:
        return False


def _parser(key: Key) -> Any:
    if key.choices is not None:
        return one_of(*key.choices)
    return {"bool": _str2bool, "int": int, "float": float, "str": str}[key.type]


class _Argument:
    """What config.py reads of an ``SSL_Argument``: name, type, default, help."""

    def __init__(self, key: Key) -> None:
        self.name, self.default, self.help = f"--{key.name}", key.default, key.help
        self.type = _parser(key)


def problems(name: str, args: Any) -> List[str]:
    """Problems of one of our algorithms' keys in ``args``: the declared ranges, then its ``check``."""
    entry = ALGORITHMS[name]
    found = check_ranges(args, [(k.name, k.range) for k in entry.keys if k.range])
    if entry.check is not None:
        found.extend(entry.check(args))
    return found


class DeclaredAlgorithm:
    """Stands in for an algorithm class: its keys (and, for ours, its rules) from this module.

    Anything else asked of it (``net_spec``, ...) imports the registered class (torch and semilearn).
    """

    def __init__(self, name: str, keys: Tuple[Key, ...], ours: bool) -> None:
        self._name, self._keys, self._ours = name, keys, ours
        self._real: Any = None

    def get_argument(self) -> List[_Argument]:
        return [_Argument(k) for k in self._keys]

    def real(self) -> Any:
        """The registered class itself (imports torch and semilearn)."""
        if self._real is None:
            self._real = registered_class(self._name)
        return self._real

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") or attr in ("_name", "_keys", "_ours", "_real"):
            raise AttributeError(attr)
        if attr == "validate_config":
            if self._ours:
                return lambda args: problems(self._name, args)
            raise AttributeError(attr)  # USB's algorithms have no such hook
        return getattr(self.real(), attr)

    def __repr__(self) -> str:
        return f"<algorithm {self._name!r} (keys declared in usb_cfsg.algorithm_keys)>"


def declared(name: str) -> Optional[DeclaredAlgorithm]:
    """A light stand-in for algorithm ``name``, or None when its keys are not declared here."""
    if name in ALGORITHMS:
        return DeclaredAlgorithm(name, ALGORITHMS[name].keys, True)
    if name in USB_ALGORITHMS and usb_version_installed():
        return DeclaredAlgorithm(name, USB_ALGORITHMS[name], False)
    return None


def algorithm_class(name: str) -> Any:
    """The stand-in of :func:`declared` when there is one, else the registered class (imported)."""
    stand_in = declared(name)
    if stand_in is not None:
        return stand_in
    return registered_class(name)


def registered_class(name: str) -> Any:
    """The class registered with semilearn as ``name`` (imports torch and semilearn, registers ours).

    Raises:
        RegistryError: ``name`` is not registered; the message lists the closest names.
    """
    # importing semilearn fills ALGORITHMS with USB's algorithms and ours (usb_cfsg/__init__.py registers
    # them the moment semilearn loads; a patched semilearn imports them itself)
    import semilearn.algorithms  # noqa: F401
    from semilearn.core.utils import ALGORITHMS

    from .errors import RegistryError, did_you_mean

    if name not in ALGORITHMS:
        names = sorted(ALGORITHMS.keys())
        raise RegistryError(f"unknown algorithm {name!r}{did_you_mean(name, names)} Known: {', '.join(names)}")
    return ALGORITHMS[name]
