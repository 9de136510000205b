"""Cosine classifier: scaled cosine similarity between features and trainable class weights.

Used for the coarse logits ``l_c = s * cos(z_c, W_c)`` and the fine logits ``l_f = s * cos(z_f, W_f)``
of CFSG-CLIP, with ``W`` initialised from the CLIP text embeddings of the seen classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Default logit scale ``s``. CLIP's learned scale is 100 (temperature 0.01), which makes the
#: initial zero-shot posterior very peaked and the CE gradients of a fine-tuned cosine classifier
#: vanish early; 1/0.07 ~= 14.3 (CLIP's *initial* scale) is too soft to reach confident
#: predictions over 100-200 fine-grained classes (a margin of log(K) ~ 5.3 needs a cosine gap of
#: 0.37). 30 (as in CosFace/NormFace-style classifiers) needs a gap of ~0.18 and trains well.
DEFAULT_LOGIT_SCALE = 30.0


class CosineClassifier(nn.Module):
    """Scaled cosine-similarity classifier ``logits = s * cos(z, W)``.

    The weight is stored as given (initialised L2-normalised) and normalised again in every
    forward pass, so its norm never matters; the scale ``s`` is a fixed float, not learned.

    Args:
        num_classes: Number of classes K.
        dim: Feature dimension D.
        scale: Logit scale s (fixed). Defaults to :data:`DEFAULT_LOGIT_SCALE` (30).
        init: Optional initial class embeddings [K, D] (e.g. CLIP text embeddings); they are
            L2-normalised and copied. Without it the weight is a random Gaussian, normalised.

    Shapes:
        - input ``z``: [B, D] (any norm; normalised inside)
        - output: [B, K], values in [-s, s]
    """

    def __init__(
        self, num_classes: int, dim: int, scale: float = DEFAULT_LOGIT_SCALE, init: Tensor | None = None
    ) -> None:
        super().__init__()
        if num_classes < 1 or dim < 1:
            raise ValueError(f"num_classes and dim must be positive, got {num_classes} and {dim}")
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.num_classes = int(num_classes)
        self.dim = int(dim)
        self.scale = float(scale)
        self.weight = nn.Parameter(F.normalize(torch.randn(num_classes, dim), dim=-1))
        if init is not None:
            self.init_from(init)

    @classmethod
    def from_text(cls, text_emb: Tensor, scale: float = DEFAULT_LOGIT_SCALE) -> CosineClassifier:
        """Build a classifier whose weight is the normalised ``text_emb`` [K, D]."""
        if text_emb.dim() != 2:
            raise ValueError(f"text_emb must be [K, D], got shape {tuple(text_emb.shape)}")
        return cls(text_emb.shape[0], text_emb.shape[1], scale=scale, init=text_emb)

    @torch.no_grad()
    def init_from(self, text_emb: Tensor) -> None:
        """Overwrite the weight with the L2-normalised ``text_emb``.

        Args:
            text_emb: Class embeddings [K, D]; copied (detached), so the source stays frozen.
        """
        if tuple(text_emb.shape) != tuple(self.weight.shape):
            raise ValueError(f"text_emb must have shape {tuple(self.weight.shape)}, got {tuple(text_emb.shape)}")
        self.weight.copy_(F.normalize(text_emb.detach().to(self.weight), dim=-1))

    def normalized_weight(self) -> Tensor:
        """The unit-norm class weights [K, D] (differentiable)."""
        return F.normalize(self.weight, dim=-1)

    def forward(self, z: Tensor) -> Tensor:
        """Compute ``s * cos(z, W)``.

        Args:
            z: Features [B, D].

        Returns:
            Logits [B, K].
        """
        w = self.normalized_weight()
        return self.scale * F.normalize(z, dim=-1) @ w.to(z.dtype).t()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, dim={self.dim}, scale={self.scale}"
