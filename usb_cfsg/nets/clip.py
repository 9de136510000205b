"""CLIP networks for USB: open_clip model creation, the plain CLIP classifier net, builders (weight files and
downloads: :mod:`usb_cfsg.nets.weights`).

Net names (``net:`` in a config) map to open_clip architectures:

=============  ==============  ===========================================
name           open_clip name  note
=============  ==============  ===========================================
clip_vit_b16   ViT-B-16        the paper's backbone
clip_vit_b32   ViT-B-32
clip_vit_l14   ViT-L-14
clip_tiny      clip-tiny       width 128, 4 blocks, patch 16: tests, CPU demo
open_clip      ``clip_model``  any open_clip ViT: an architecture name (``ViT-L-14-336``,
                               ``ViT-B-16-quickgelu``, ...), ``hf-hub:org/repo`` or
                               ``local-dir:/folder`` (``open_clip_config.json`` + weights)
=============  ==============  ===========================================

Our heads split a native open_clip ``VisionTransformer`` with class-token pooling (frozen trunk,
tuned blocks, value-path patch features). Architectures whose image tower is a ResNet (``RN50``),
a timm model (SigLIP, EVA) or uses attentional pooling (CoCa) are refused with a
:class:`~usb_cfsg.errors.ConfigError` that names ViT architectures to use instead.

Weights, in this order:

* ``pretrain_path``: a local file. OpenAI's TorchScript archives (``ViT-B-16.pt`` as OpenAI
  distributes them: only their weights are read and put into open_clip's model, built with
  OpenAI's QuickGELU, so the image features equal open_clip's for the same weights), open_clip /
  Hugging Face state dicts (``.bin``, ``.pt``, ``.pth``, ``.safetensors``) and big_vision ``.npz``.
* ``pretrained``: an open_clip tag (``openai``, ``laion2b_s34b_b88k``, ...). A file already in the
  local caches (``~/.cache/huggingface``, ``~/.cache/clip``) is used without any network access;
  otherwise the download host is probed once (3 s) and, without a connection (or with
  ``HF_HUB_OFFLINE=1``), the build fails at once with a message saying how to pass a local file.
  The activation (GELU or QuickGELU) follows the tag, as open_clip's tag table says.
* neither (``pretrained: none``): random initialisation, logged as a warning.

A builder is called by USB as ``builder(num_classes=, pretrained=, pretrained_path=)`` and by our
engine with more keywords (``img_size``, ``num_tuned_blocks``, ``class_names``, ``clip_model``, ...).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..errors import ConfigError, did_you_mean
from ..modules.cosine_classifier import CosineClassifier
from ..registry import Registry
from .backbone import ClipBackbone
from .text import ClassTextEmbeddings, clip_text_embeddings, minilm_text_embeddings
from .weights import (
    _HUB_WEIGHT_FILES,
    _hub_cached,
    _hub_download,
    _hub_weights,
    _pretrained_file,
    _quiet_open_clip,
    _unknown_tag_message,
    is_torchscript_archive,
    load_weights,
    read_weights_file,
)
from .zero_shot import ZeroShotMixin, build_prior

logger = logging.getLogger("usb_cfsg")

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered_configs = False

#: net name -> open_clip architecture name
CLIP_ARCHS: Dict[str, str] = {
    "clip_vit_b16": "ViT-B-16",
    "clip_vit_b32": "ViT-B-32",
    "clip_vit_l14": "ViT-L-14",
    "clip_tiny": "clip-tiny",
}
#: The net whose open_clip model is the config key ``clip_model``.
GENERIC_NET = "open_clip"
_OPEN_CLIP_CONFIG = "open_clip_config.json"
_VIT_FIX = (
    "use an open_clip ViT architecture instead, e.g. net: open_clip with clip_model: ViT-B-16, "
    "ViT-B-16-quickgelu, ViT-L-14 or ViT-L-14-336 (open_clip.list_models() lists them)"
)

#: head name -> class building a network on a ClipBackbone (``clip`` here, ``cfsg`` in cfsg.py)
NET_HEADS: Registry[Callable[..., nn.Module]] = Registry("network head")


def _ensure_configs() -> None:
    global _registered_configs
    if not _registered_configs:
        import open_clip

        open_clip.add_model_config(_CONFIG_DIR)
        _registered_configs = True


def normalize_pretrained(pretrained: Union[str, bool, None]) -> Optional[str]:
    """USB passes booleans (``use_pretrain``); we take open_clip tags. ``True`` means ``openai``."""
    if pretrained is True:
        return "openai"
    if pretrained in (False, None) or str(pretrained).lower() in ("none", "null", ""):
        return None
    return str(pretrained)


# ----------------------------------------------------------------------------- which model


def _none_if_empty(value: Optional[str]) -> Optional[str]:
    if value is None or str(value).strip().lower() in ("", "none", "null"):
        return None
    return str(value).strip()


def resolve_clip_model(net: str, clip_model: Optional[str]) -> str:
    """The open_clip model name a net builds: fixed for ``clip_*`` nets, ``clip_model`` for ``open_clip``.

    Raises:
        ConfigError: ``net: open_clip`` without ``clip_model``, or ``clip_model`` given with a
            fixed net that builds another architecture.
    """
    name = _none_if_empty(clip_model)
    if net == GENERIC_NET:
        if name is None:
            raise ConfigError(
                "net: open_clip needs clip_model: <open_clip model>, e.g. clip_model: ViT-B-16 "
                "(an architecture of open_clip.list_models()), hf-hub:org/repo or local-dir:/folder"
            )
        return name
    if net not in CLIP_ARCHS:
        raise ConfigError(f"unknown CLIP net {net!r}{did_you_mean(net, [*CLIP_ARCHS, GENERIC_NET])}")
    arch = CLIP_ARCHS[net]
    if name is not None and name != arch:
        raise ConfigError(
            f"clip_model: {name} is read only with net: open_clip (net: {net} always builds {arch}); "
            f"set net: open_clip to build {name}, or drop clip_model"
        )
    return arch


def _schema(name: str) -> Tuple[Optional[str], str]:
    """``('hf-hub' | 'local-dir' | None, identifier)`` of an open_clip model name."""
    for prefix in ("hf-hub:", "local-dir:"):
        if name.startswith(prefix):
            ident = name[len(prefix) :].strip()
            if not ident:
                raise ConfigError(
                    f"clip_model {name!r} names no {prefix[:-1]} location, e.g. {prefix}"
                    f"{'org/repo' if prefix == 'hf-hub:' else '/path/to/folder'}"
                )
            return prefix[:-1], ident
    return None, name


def check_vit_tower(name: str, model_cfg: Dict[str, Any]) -> None:
    """Refuse open_clip models whose image tower our heads cannot split, naming the fix.

    Our heads need open_clip's own ``VisionTransformer`` with class-token pooling: its blocks are
    split into a frozen trunk and tuned blocks, and the semantic filtering module reads its patch
    tokens and last block's value path.

    Raises:
        ConfigError: ResNet tower (``RN50``), timm tower (SigLIP, EVA, ...), attentional pooling (CoCa).
    """
    vision = model_cfg.get("vision_cfg") or {}
    if "timm_model_name" in vision:
        raise ConfigError(
            f"clip_model {name}: its image tower is the timm model {vision['timm_model_name']!r}; "
            f"the clip and cfsg heads split only open_clip's own VisionTransformer (SigLIP, EVA and "
            f"other timm towers are not supported); {_VIT_FIX}"
        )
    if isinstance(vision.get("layers"), (list, tuple)):
        raise ConfigError(
            f"clip_model {name}: its image tower is a ResNet (layers {list(vision['layers'])}), which "
            f"has no ViT patch tokens for the semantic filtering module nor blocks to split; {_VIT_FIX}"
        )
    if vision.get("attentional_pool") or vision.get("pool_type", "tok") != "tok" or "multimodal_cfg" in model_cfg:
        raise ConfigError(
            f"clip_model {name}: its image tower pools with attention, not with a class token, "
            f"which the clip and cfsg heads need; {_VIT_FIX}"
        )


def _builtin_config(name: str) -> Dict[str, Any]:
    import open_clip

    _ensure_configs()
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise ConfigError(
            f"clip_model {name!r} is not an open_clip architecture"
            f"{did_you_mean(name, open_clip.list_models())} (open_clip.list_models() lists them; "
            f"or give hf-hub:org/repo or local-dir:/folder)"
        )
    return cfg


def _read_config_file(path: str, name: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"clip_model {name}: cannot read {path}: {exc}") from None
    model_cfg = data.get("model_cfg", data) if isinstance(data, dict) else None
    if not isinstance(model_cfg, dict) or "vision_cfg" not in model_cfg:
        raise ConfigError(f"clip_model {name}: {path} is not an open_clip config (no model_cfg.vision_cfg)")
    return data


def _config_file(name: str, download: bool) -> Optional[str]:
    """Path of the ``open_clip_config.json`` of an ``hf-hub:`` / ``local-dir:`` model (None: not here)."""
    schema, ident = _schema(name)
    if schema == "local-dir":
        folder = Path(ident)
        if not folder.is_dir():
            raise ConfigError(
                f"clip_model {name}: folder {ident!r} does not exist; local-dir: needs a folder with "
                f"{_OPEN_CLIP_CONFIG} and the weights"
            )
        path = folder / _OPEN_CLIP_CONFIG
        if not path.is_file():
            raise ConfigError(
                f"clip_model {name}: {path} is missing; local-dir: needs a folder with "
                f"{_OPEN_CLIP_CONFIG} (as open_clip's hf-hub repositories have) and the weights"
            )
        return str(path)
    cached = _hub_cached(ident, (_OPEN_CLIP_CONFIG,))
    if cached or not download:
        return cached
    return _hub_download(ident, _OPEN_CLIP_CONFIG, f"clip_model {name}")


def validate_clip_model(
    net: str, clip_model: Optional[str], pretrained: Union[str, bool, None] = None, pretrain_path: Optional[str] = None
) -> str:
    """Check, without building anything or using the network, that a net can be built.

    Args:
        net: The ``net`` key.
        clip_model: The ``clip_model`` key.
        pretrained: The ``pretrained`` key: for an architecture with open_clip tags it must be one of
            them (or a file), unless ``pretrain_path`` is given; ``hf-hub:`` / ``local-dir:`` models
            bring their own weights. Architectures without any tag (``clip-tiny``) are left to the
            builder, which reports the missing weights.
        pretrain_path: The ``pretrain_path`` key (not checked here: eval.py may run where the
            training machine's file is absent).

    Returns:
        The open_clip model name.

    Raises:
        ConfigError: See :func:`resolve_clip_model` and :func:`check_vit_tower`; unknown
            architecture; unknown pretrained tag.
    """
    name = resolve_clip_model(net, clip_model)
    schema, _ = _schema(name)
    if schema is None:
        check_vit_tower(name, _builtin_config(name))
        tag = normalize_pretrained(pretrained)
        if tag and not _none_if_empty(pretrain_path):
            import open_clip

            known = [t for a, t in open_clip.list_pretrained() if a == name]
            if known and not open_clip.get_pretrained_cfg(name, tag) and not os.path.isfile(tag):
                raise ConfigError(_unknown_tag_message(name, tag))
    else:
        path = _config_file(name, download=False)
        if path is not None:
            data = _read_config_file(path, name)
            check_vit_tower(name, data.get("model_cfg", data))
    return name


def _activation_from_config(name: str, pretrained: Optional[str], pretrain_path: Optional[str]) -> bool:
    """QuickGELU for weights that were trained with it (OpenAI's), from the config alone."""
    if pretrain_path:
        if os.path.isfile(pretrain_path):
            return is_torchscript_archive(pretrain_path)
        logger.warning(
            "pretrain_path %s is not here: building %s with its configured activation; if the run "
            "was trained from an OpenAI TorchScript archive, results differ without that file",
            pretrain_path,
            name,
        )
        return False
    if pretrained and _schema(name)[0] is None:
        import open_clip

        return bool(open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu", False))
    return False


def create_clip(
    arch: str,
    pretrained: Optional[str],
    pretrain_path: Optional[str],
    img_size: int,
    weights_from_checkpoint: bool = False,
):
    """Create an open_clip model and its tokenizer, loading weights as asked (see the module docstring).

    Args:
        arch: open_clip model name: an architecture, ``hf-hub:org/repo`` or ``local-dir:/folder``.
        pretrained: open_clip pretrained tag (e.g. ``openai``) or None. For ``hf-hub:`` and
            ``local-dir:`` models any value but None means "the weights that come with the model".
        pretrain_path: A local weights file; takes precedence over ``pretrained``.
        img_size: Input resolution (positional embeddings are resized when loading).
        weights_from_checkpoint: The caller loads trained weights next (eval.py, predict.py): no
            weights are read or downloaded here and no random-initialisation warning is logged;
            the activation still follows ``pretrained`` / ``pretrain_path``.

    Returns:
        ``(model, tokenizer)``.

    Raises:
        ConfigError: Unknown or unsupported model, weights missing, unreachable or not loadable,
            each with how to fix it.
    """
    import open_clip

    _ensure_configs()
    schema, ident = _schema(arch)
    if schema is None:
        check_vit_tower(arch, _builtin_config(arch))
        source_name = arch
    else:
        config_path = _config_file(arch, download=True)
        assert config_path is not None  # download=True raises instead of returning None
        data = _read_config_file(config_path, arch)
        check_vit_tower(arch, data.get("model_cfg", data))
        source_name = f"local-dir:{os.path.dirname(config_path)}"

    state: Optional[Dict[str, torch.Tensor]] = None
    quick_gelu = False
    source = ""
    if weights_from_checkpoint:
        quick_gelu = _activation_from_config(arch, pretrained, pretrain_path)
    elif pretrain_path:
        if not os.path.isfile(pretrain_path):
            raise ConfigError(
                f"pretrain_path {pretrain_path!r} does not exist; give the path of an open_clip or "
                f"OpenAI CLIP weights file for {arch}"
            )
        state, quick_gelu = read_weights_file(pretrain_path)
        source = pretrain_path
    elif pretrained:
        if schema is None:
            source, quick_gelu = _pretrained_file(arch, pretrained)
        elif schema == "hf-hub":
            source = _hub_weights(ident, arch)
        else:
            found = [Path(ident) / f for f in _HUB_WEIGHT_FILES if (Path(ident) / f).is_file()]
            if not found:
                raise ConfigError(
                    f"clip_model {arch}: no weights file ({', '.join(_HUB_WEIGHT_FILES)}) in {ident}; "
                    f"add one, pass pretrain_path: /path/to/weights, or set pretrained: none"
                )
            source = str(found[0])
        state, is_openai = read_weights_file(source)
        quick_gelu = quick_gelu or is_openai

    with _quiet_open_clip():
        try:
            kwargs: Dict[str, Any] = dict(force_image_size=img_size, force_quick_gelu=quick_gelu)
            if schema is None:
                model = open_clip.create_model(source_name, pretrained=None, **kwargs)
            else:
                model = open_clip.create_model(source_name, load_weights=False, **kwargs)
            tokenizer = open_clip.get_tokenizer(source_name)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"open_clip could not build {arch}: {type(exc).__name__}: {' '.join(str(exc).split())[:400]}"
            ) from None
    activation = "QuickGELU" if quick_gelu else "its configured activation"
    if state is not None:
        load_weights(model, state, arch, source)
        logger.info("CLIP %s: weights loaded from %s (%s)", arch, source, activation)
    elif weights_from_checkpoint:
        logger.debug("CLIP %s built for weights from a checkpoint (%s)", arch, activation)
    else:
        logger.warning(
            "CLIP %s: RANDOM INITIALISATION (pretrained: none) - results are not those of a pretrained CLIP", arch
        )
    return model, tokenizer


def clip_mean_std(
    net: str, clip_model: Optional[str] = None, pretrained: Union[str, bool, None] = None
) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Input normalisation of a CLIP net: the pretrained tag's or the model folder's, else OpenAI's.

    SigLIP-style tags use 0.5 / 0.5, OpenAI and LAION tags OpenAI's statistics; ``hf-hub:`` and
    ``local-dir:`` models take ``preprocess_cfg`` of their ``open_clip_config.json``.
    """
    import open_clip

    try:
        name = resolve_clip_model(net, clip_model)
        schema, _ = _schema(name)
        if schema is None:
            tag = normalize_pretrained(pretrained)
            cfg = open_clip.get_pretrained_cfg(name, tag) if tag else {}
        else:
            path = _config_file(name, download=True)
            cfg = _read_config_file(path, name).get("preprocess_cfg", {}) if path else {}
    except ConfigError:
        return OPENAI_MEAN, OPENAI_STD  # the builder reports the problem
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is None or std is None:
        return OPENAI_MEAN, OPENAI_STD
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def class_text_embeddings(
    clip_model: nn.Module,
    tokenizer,
    class_names: Sequence[str],
    templates: Sequence[str],
    text_encoder: str,
    seed: int = 0,
) -> ClassTextEmbeddings:
    """Build the seen classes' text embeddings with the chosen encoder."""
    visual: Any = clip_model.visual
    joint_dim = int(visual.proj.shape[1])
    if text_encoder == "clip":
        return ClassTextEmbeddings(
            clip_text_embeddings(clip_model, tokenizer, class_names, templates), joint_dim, learned_projection=False
        )
    if text_encoder == "minilm":
        return ClassTextEmbeddings(
            minilm_text_embeddings(class_names, templates), joint_dim, learned_projection=True, seed=seed
        )
    raise ConfigError(f"text_encoder must be clip or minilm, got {text_encoder!r}")


@NET_HEADS.register("clip")
class ClipNet(ZeroShotMixin, nn.Module):
    """CLIP image encoder + cosine classifier, to USB's net contract.

    ``forward(x, only_fc=False, only_feat=False) -> {'logits': [B, K], 'feat': [B, D]}``; ``feat`` is
    the image embedding in CLIP's joint space. The classifier is initialised from the class-name
    text embeddings, which are kept as a buffer (``text_embeddings``) so checkpoints carry them.
    With ``zs_weight`` α > 0 the net keeps the pretrained zero-shot classifier
    (:mod:`usb_cfsg.nets.zero_shot`): ``logits`` are ``(1 - α) * trained + α * zero-shot`` and the
    output also holds ``logits_zs``.

    Args:
        backbone: The split vision tower.
        text: The seen classes' text embeddings.
        num_classes: K.
        logit_scale: Scale of the cosine classifier (and of the zero-shot logits).
        zs_weight: α of the zero-shot prior (0: none).
        zs_mode: ``output`` or ``weights`` (WiSE-FT's output- or weight-space ensemble).
    """

    def __init__(
        self,
        backbone: ClipBackbone,
        text: ClassTextEmbeddings,
        num_classes: int,
        logit_scale: float = 30.0,
        zs_weight: float = 0.0,
        zs_mode: str = "output",
        **unused: Any,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        with torch.no_grad():
            emb = text()
        if emb.shape[0] != num_classes:
            raise ConfigError(f"got {emb.shape[0]} class names for num_classes={num_classes}")
        self.register_buffer("text_embeddings", emb.detach().clone())
        self.classifier = CosineClassifier.from_text(emb, scale=logit_scale)
        self.num_features = backbone.joint_dim
        self.zero_shot = build_prior(backbone, text, zs_weight, zs_mode, logit_scale)

    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(feat [B, D], trunk tokens H [B, 1 + N, W])`` of images ``x``."""
        h = self.backbone.trunk(x)
        return self.backbone.project(self.backbone.tuned(h)[:, :1])[:, 0], h

    def closed_logits(self, feat: torch.Tensor, h: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``{"logits": ...}`` of the cosine classifier, ensembled with the prior (plus ``logits_zs``) if any."""
        logits, zs = self.with_prior(self.classifier(feat), h)
        return {"logits": logits} if zs is None else {"logits": logits, "logits_zs": zs}

    def forward(self, x: torch.Tensor, only_fc: bool = False, only_feat: bool = False, **kwargs: Any):
        if only_fc:
            return self.classifier(x)
        feat, h = self.encode(x)
        if only_feat:
            return feat
        return {**self.closed_logits(feat, h), "feat": feat}

    def group_matcher(self, coarse: bool = False, prefix: str = "") -> dict:
        return self.backbone.group_matcher(coarse, prefix=f"{prefix}backbone.")

    def no_weight_decay(self) -> set:
        return self.backbone.no_weight_decay(prefix="backbone.")


def build_clip_net(
    arch: str,
    num_classes: int,
    pretrained: Union[str, bool, None] = None,
    pretrained_path: Optional[str] = None,
    *,
    head: str = "clip",
    img_size: int = 224,
    num_tuned_blocks: int = 4,
    class_names: Optional[Sequence[str]] = None,
    prompt_templates: Optional[Sequence[str]] = None,
    text_encoder: str = "clip",
    seed: int = 0,
    weights_from_checkpoint: bool = False,
    **head_kwargs: Any,
) -> nn.Module:
    """Create a CLIP network of the given head on an open_clip architecture.

    Args:
        arch: open_clip model name (architecture, ``hf-hub:org/repo`` or ``local-dir:/folder``).
        num_classes: K, the number of seen classes.
        pretrained: open_clip tag, USB boolean, or None for random init.
        pretrained_path: Local weights file (wins over ``pretrained``).
        head: ``clip`` (ClipNet) or ``cfsg`` (the CFSG network).
        img_size: Input resolution.
        num_tuned_blocks: m, trainable last blocks.
        class_names: Seen class names (label order); default ``class 0 .. class K-1``.
        prompt_templates: Prompt templates; default ``("a photo of a {}.",)``.
        text_encoder: ``clip`` or ``minilm`` (see :mod:`usb_cfsg.nets.text`).
        seed: Seed of any random initialisation outside open_clip's.
        weights_from_checkpoint: Trained weights are loaded next (eval.py, predict.py): read and
            download no CLIP weights, log no random-initialisation warning.
        **head_kwargs: Passed to the head class.
    """
    names = list(class_names) if class_names else [f"class {i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise ConfigError(f"{len(names)} class names given for num_classes={num_classes}")
    templates = tuple(prompt_templates) if prompt_templates else ("a photo of a {}.",)
    model, tokenizer = create_clip(
        arch,
        normalize_pretrained(pretrained),
        pretrained_path,
        img_size,
        weights_from_checkpoint=weights_from_checkpoint,
    )
    text = class_text_embeddings(model, tokenizer, names, templates, text_encoder, seed)
    backbone = ClipBackbone(model.visual, num_tuned_blocks)
    if (
        head_kwargs.get("sfm_scales") == "clip"
    ):  # the checkpoint's own logit scale (a stored buffer replaces it on load)
        head_kwargs["clip_logit_scale"] = float(model.logit_scale.detach().exp())
    net: Any = NET_HEADS.get(head)(backbone, text, num_classes, **head_kwargs)
    net.class_names = names
    return net


def _make_builder(name: str) -> Callable[..., nn.Module]:
    def builder(
        num_classes: int,
        pretrained: Union[str, bool, None] = None,
        pretrained_path: Optional[str] = None,
        clip_model: Optional[str] = None,
        **kwargs: Any,
    ) -> nn.Module:
        return build_clip_net(resolve_clip_model(name, clip_model), num_classes, pretrained, pretrained_path, **kwargs)

    def mean_std_for(args: Any) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
        return clip_mean_std(name, getattr(args, "clip_model", None), getattr(args, "pretrained", None))

    arch = CLIP_ARCHS.get(name, "the open_clip model named by clip_model")
    builder.__name__ = name
    builder.__qualname__ = name
    builder.__doc__ = f"USB net builder: CLIP {arch} (see usb_cfsg.nets.clip.build_clip_net)."
    builder.mean = OPENAI_MEAN  # type: ignore[attr-defined]
    builder.std = OPENAI_STD  # type: ignore[attr-defined]
    builder.mean_std_for = mean_std_for  # type: ignore[attr-defined]
    builder.usb_cfsg_clip = True  # type: ignore[attr-defined]
    return builder


BUILDERS: Dict[str, Callable[..., nn.Module]] = {name: _make_builder(name) for name in [*CLIP_ARCHS, GENERIC_NET]}
