"""Visual-semantic injection (VSI): category cue tokens for the fine-guidance branch.

For the top-k classes of the coarse logits, a cue token ``c_j = W_inj [mu_kj ; t_kj] + e_type`` is
built from the class prototype ``mu`` and the class text embedding ``t`` (both in the joint space,
dimension D), in the ViT token width W. The network appends the cues to the trunk tokens H and
runs the last m blocks again on ``[cls, kept patches, cues]``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT_TOPK = 3
#: Standard deviation of the type embedding's initialisation (as ViT's class/position embeddings).
DEFAULT_TYPE_INIT_STD = 0.02


class VSIOutput(NamedTuple):
    """What :class:`VisualSemanticInjection` returns (unpacks as ``cues, topk_idx``).

    Attributes:
        cues: Cue tokens [B, k, W], in order of decreasing coarse logit.
        topk_idx: The classes they encode [B, k] (long).
    """

    cues: Tensor
    topk_idx: Tensor


class VisualSemanticInjection(nn.Module):
    """Build category cue tokens from prototypes and text embeddings.

    Args:
        joint_dim: D, the dimension of prototypes and text embeddings.
        width: W, the ViT token width.
        topk: k, how many classes get a cue token (default 3; clamped to K at run time).
        type_init_std: Std of the normal initialisation of the learned type embedding [W]
            (default 0.02); 0 initialises it to zeros.

    ``W_inj`` (``self.proj``) is ``nn.Linear(2D, W)`` with bias and PyTorch's default
    initialisation. Prototypes and text rows are L2-normalised before concatenation, so the cue
    scale does not depend on their stored norms (with D=512 and the default init the cue entries
    have std ~0.03, comparable to the type and position embeddings). Prototypes are detached:
    no gradient ever reaches them (they are EMA buffers). Text embeddings are not detached (they
    come from the frozen text tower; a learnable prompt variant would receive gradients).
    """

    def __init__(
        self, joint_dim: int, width: int, topk: int = DEFAULT_TOPK, type_init_std: float = DEFAULT_TYPE_INIT_STD
    ) -> None:
        super().__init__()
        if joint_dim < 1 or width < 1:
            raise ValueError(f"joint_dim and width must be positive, got {joint_dim} and {width}")
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        if type_init_std < 0:
            raise ValueError(f"type_init_std must be >= 0, got {type_init_std}")
        self.joint_dim = int(joint_dim)
        self.width = int(width)
        self.topk = int(topk)
        self.proj = nn.Linear(2 * joint_dim, width)
        self.type_embedding = nn.Parameter(torch.randn(width) * type_init_std)

    def cue_tokens(self, class_idx: Tensor, prototypes: Tensor, text: Tensor) -> Tensor:
        """Cue tokens for given classes: ``c = W_inj [mu_k ; t_k] + e_type``.

        Args:
            class_idx: Long [B, k], class indices in [0, K).
            prototypes: mu [K, D] (detached inside).
            text: t [K, D].

        Returns:
            [B, k, W].
        """
        if prototypes.dim() != 2 or prototypes.shape != text.shape or prototypes.shape[1] != self.joint_dim:
            raise ValueError(
                f"prototypes and text must both be [K, {self.joint_dim}], got "
                f"{tuple(prototypes.shape)} and {tuple(text.shape)}"
            )
        dtype = self.proj.weight.dtype
        mu = F.normalize(prototypes.detach().to(dtype), dim=-1)
        t = F.normalize(text.to(dtype), dim=-1)
        pair = torch.cat([mu, t], dim=-1)[class_idx]  # [B, k, 2D]
        return self.proj(pair) + self.type_embedding

    def forward(self, coarse_logits: Tensor, prototypes: Tensor, text: Tensor, own: Tensor | None = None) -> VSIOutput:
        """Select the top-k classes of ``coarse_logits`` and build their cue tokens.

        Args:
            coarse_logits: [B, K] (only their ranking is used; no gradient flows through them).
            prototypes: mu [K, D].
            text: t [K, D].
            own: Optional per-image visual features [B, D] (detached inside) that replace the class
                prototypes in every cue of their image: ``c_j = W_inj [own ; t_kj] + e_type``.

        Returns:
            :class:`VSIOutput` ``(cues [B, k, W], topk_idx [B, k])`` with ``k = min(topk, K)``.
        """
        if coarse_logits.dim() != 2 or coarse_logits.shape[1] != prototypes.shape[0]:
            raise ValueError(f"coarse_logits must be [B, {prototypes.shape[0]}], got {tuple(coarse_logits.shape)}")
        k = min(self.topk, coarse_logits.shape[1])
        topk_idx = coarse_logits.detach().topk(k, dim=1).indices
        if own is None:
            return VSIOutput(self.cue_tokens(topk_idx, prototypes, text), topk_idx)
        dtype = self.proj.weight.dtype
        mine = F.normalize(own.detach().to(dtype), dim=-1)[:, None].expand(-1, k, -1)
        t = F.normalize(text.to(dtype), dim=-1)[topk_idx]
        return VSIOutput(self.proj(torch.cat([mine, t], dim=-1)) + self.type_embedding, topk_idx)

    def extra_repr(self) -> str:
        return f"joint_dim={self.joint_dim}, width={self.width}, topk={self.topk}"
