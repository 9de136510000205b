"""CLIP networks for USB: open_clip model creation, the plain CLIP classifier net, builders.

Net names (``net:`` in a config) map to open_clip architectures:

=============  ==============  ===========================================
name           open_clip name  note
=============  ==============  ===========================================
clip_vit_b16   ViT-B-16        the paper's backbone
clip_vit_b32   ViT-B-32
clip_vit_l14   ViT-L-14
clip_tiny      clip-tiny       width 128, 4 blocks, patch 16: tests, CPU demo
=============  ==============  ===========================================

A builder is called by USB as ``builder(num_classes=, pretrained=, pretrained_path=)`` and by our
engine with more keywords (``img_size``, ``num_tuned_blocks``, ``class_names``, ...).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..errors import ConfigError
from ..modules.cosine_classifier import CosineClassifier
from ..registry import Registry
from .backbone import ClipBackbone
from .text import ClassTextEmbeddings, clip_text_embeddings, minilm_text_embeddings

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


def create_clip(arch: str, pretrained: Optional[str], pretrain_path: Optional[str], img_size: int):
    """Create an open_clip model and its tokenizer, loading weights as asked.

    Args:
        arch: open_clip architecture name.
        pretrained: open_clip pretrained tag (e.g. ``openai``) or None.
        pretrain_path: A local weights file; takes precedence over ``pretrained``.
        img_size: Input resolution (positional embeddings are resized when loading).

    Returns:
        ``(model, tokenizer)``.

    Raises:
        ConfigError: weights missing or not loadable, with how to pass a local file.
    """
    import open_clip

    _ensure_configs()
    tokenizer = open_clip.get_tokenizer(arch)
    if pretrain_path:
        if not os.path.isfile(pretrain_path):
            raise ConfigError(f"pretrain_path {pretrain_path!r} does not exist; give the path of an open_clip or "
                              f"OpenAI CLIP weights file for {arch}")
        model = open_clip.create_model(arch, pretrained=None, force_image_size=img_size)
        try:
            open_clip.load_checkpoint(model, pretrain_path, strict=True, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - re-raised with the file named
            raise ConfigError(f"could not load CLIP weights from {pretrain_path!r} into {arch}: {exc}") from exc
        logger.info("CLIP %s: weights loaded from %s", arch, pretrain_path)
        return model, tokenizer
    if pretrained:
        try:
            model = open_clip.create_model(arch, pretrained=pretrained, force_image_size=img_size)
        except Exception as exc:  # noqa: BLE001 - network/hub failures take many forms
            tags = [t for a, t in open_clip.list_pretrained() if a == arch]
            raise ConfigError(
                f"could not fetch pretrained weights {pretrained!r} for {arch} ({type(exc).__name__}: {exc}). "
                f"Known tags for {arch}: {tags or 'none'}. On a machine without internet, download the weights "
                f"elsewhere (e.g. open_clip.create_model('{arch}', pretrained='{pretrained}') fills "
                f"~/.cache/huggingface) and pass pretrain_path: /path/to/open_clip_model.safetensors; "
                f"or set pretrained: none for an explicit random init") from exc
        logger.info("CLIP %s: pretrained weights %r", arch, pretrained)
        return model, tokenizer
    model = open_clip.create_model(arch, pretrained=None, force_image_size=img_size)
    logger.warning("CLIP %s: RANDOM INITIALISATION (pretrained: none) - results are not those of a "
                   "pretrained CLIP", arch)
    return model, tokenizer


def class_text_embeddings(clip_model: nn.Module, tokenizer, class_names: Sequence[str],
                          templates: Sequence[str], text_encoder: str, seed: int = 0) -> ClassTextEmbeddings:
    """Build the seen classes' text embeddings with the chosen encoder."""
    joint_dim = clip_model.visual.proj.shape[1]
    if text_encoder == "clip":
        return ClassTextEmbeddings(clip_text_embeddings(clip_model, tokenizer, class_names, templates),
                                   joint_dim, learned_projection=False)
    if text_encoder == "minilm":
        return ClassTextEmbeddings(minilm_text_embeddings(class_names, templates), joint_dim,
                                   learned_projection=True, seed=seed)
    raise ConfigError(f"text_encoder must be clip or minilm, got {text_encoder!r}")


@NET_HEADS.register("clip")
class ClipNet(nn.Module):
    """CLIP image encoder + cosine classifier, to USB's net contract.

    ``forward(x, only_fc=False, only_feat=False) -> {'logits': [B, K], 'feat': [B, D]}``; ``feat`` is
    the image embedding in CLIP's joint space. The classifier is initialised from the class-name
    text embeddings, which are kept as a buffer (``text_embeddings``) so checkpoints carry them.

    Args:
        backbone: The split vision tower.
        text: The seen classes' text embeddings.
        num_classes: K.
        logit_scale: Scale of the cosine classifier.
    """

    def __init__(self, backbone: ClipBackbone, text: ClassTextEmbeddings, num_classes: int,
                 logit_scale: float = 30.0, **unused: Any) -> None:
        super().__init__()
        self.backbone = backbone
        with torch.no_grad():
            emb = text()
        if emb.shape[0] != num_classes:
            raise ConfigError(f"got {emb.shape[0]} class names for num_classes={num_classes}")
        self.register_buffer("text_embeddings", emb.detach().clone())
        self.classifier = CosineClassifier.from_text(emb, scale=logit_scale)
        self.num_features = backbone.joint_dim

    def forward(self, x: torch.Tensor, only_fc: bool = False, only_feat: bool = False, **kwargs: Any):
        if only_fc:
            return self.classifier(x)
        feat = self.backbone.project(self.backbone.tuned(self.backbone.trunk(x))[:, :1])[:, 0]
        if only_feat:
            return feat
        return {"logits": self.classifier(feat), "feat": feat}

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
    **head_kwargs: Any,
) -> nn.Module:
    """Create a CLIP network of the given head on an open_clip architecture.

    Args:
        arch: open_clip architecture name.
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
        **head_kwargs: Passed to the head class.
    """
    names = list(class_names) if class_names else [f"class {i}" for i in range(num_classes)]
    if len(names) != num_classes:
        raise ConfigError(f"{len(names)} class names given for num_classes={num_classes}")
    templates = tuple(prompt_templates) if prompt_templates else ("a photo of a {}.",)
    model, tokenizer = create_clip(arch, normalize_pretrained(pretrained), pretrained_path, img_size)
    text = class_text_embeddings(model, tokenizer, names, templates, text_encoder, seed)
    backbone = ClipBackbone(model.visual, num_tuned_blocks)
    net = NET_HEADS.get(head)(backbone, text, num_classes, **head_kwargs)
    net.class_names = names
    return net


def _make_builder(name: str, arch: str) -> Callable[..., nn.Module]:
    def builder(num_classes: int, pretrained: Union[str, bool, None] = None,
                pretrained_path: Optional[str] = None, **kwargs: Any) -> nn.Module:
        return build_clip_net(arch, num_classes, pretrained, pretrained_path, **kwargs)

    builder.__name__ = name
    builder.__qualname__ = name
    builder.__doc__ = f"USB net builder: CLIP {arch} (see usb_cfsg.nets.clip.build_clip_net)."
    builder.mean = OPENAI_MEAN  # type: ignore[attr-defined]
    builder.std = OPENAI_STD  # type: ignore[attr-defined]
    builder.usb_cfsg_clip = True  # type: ignore[attr-defined]
    return builder


BUILDERS: Dict[str, Callable[..., nn.Module]] = {name: _make_builder(name, arch) for name, arch in CLIP_ARCHS.items()}
