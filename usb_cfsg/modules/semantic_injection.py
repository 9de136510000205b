"""Visual-semantic injection (VSI): category cue tokens for the fine-guidance branch.

For the top-k classes of the coarse logits, a cue token ``c_j = W_inj [mu_kj ; t_kj] + e_type`` is
built from the class prototype ``mu`` and the class text embedding ``t`` (both in the joint space,
dimension D), in the ViT token width W. The network appends the cues to the trunk tokens H and
runs the last m blocks again on ``[cls, kept patches, cues]``.

With ``depth`` d > 1 (``vsi_inject: deep``, as VPT-deep's and MaPLe's deep prompts) the same pairs
``[mu_kj ; t_kj]`` also give the cue tokens of the next d - 1 blocks, each through its own projection
(:meth:`VisualSemanticInjection.deep_cues`): the network replaces the cue positions' outputs of one
block with the next block's cues, so the cues enter every tuned block instead of the first only.
"""

from __future__ import annotations

from typing import NamedTuple, Tuple

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
        depth: d, how many consecutive blocks get cue tokens (1: the first only; d > 1 adds d - 1
            projections ``nn.Linear(2D, W)``, one per later block, for :meth:`deep_cues`).

    ``W_inj`` (``self.proj``) is ``nn.Linear(2D, W)`` with bias and PyTorch's default
    initialisation. Prototypes and text rows are L2-normalised before concatenation, so the cue
    scale does not depend on their stored norms (with D=512 and the default init the cue entries
    have std ~0.03, comparable to the type and position embeddings). Prototypes are detached:
    no gradient ever reaches them (they are EMA buffers). Text embeddings are not detached (they
    come from the frozen text tower; a learnable prompt variant would receive gradients).
    """

    def __init__(
        self,
        joint_dim: int,
        width: int,
        topk: int = DEFAULT_TOPK,
        type_init_std: float = DEFAULT_TYPE_INIT_STD,
        depth: int = 1,
    ) -> None:
        super().__init__()
        if joint_dim < 1 or width < 1:
            raise ValueError(f"joint_dim and width must be positive, got {joint_dim} and {width}")
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        if type_init_std < 0:
            raise ValueError(f"type_init_std must be >= 0, got {type_init_std}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.joint_dim = int(joint_dim)
        self.width = int(width)
        self.topk = int(topk)
        self.proj = nn.Linear(2 * joint_dim, width)
        self.type_embedding = nn.Parameter(torch.randn(width) * type_init_std)
        self.deep = nn.ModuleList(nn.Linear(2 * joint_dim, width) for _ in range(depth - 1))

    def cue_tokens(self, class_idx: Tensor, prototypes: Tensor, text: Tensor) -> Tensor:
        """Cue tokens for given classes: ``c = W_inj [mu_k ; t_k] + e_type``.

        Args:
            class_idx: Long [B, k], class indices in [0, K).
            prototypes: mu [K, D] (detached inside).
            text: t [K, D].

        Returns:
            [B, k, W].
        """
        return self.tokens(self._pairs(class_idx, prototypes, text))

    def tokens(self, pairs: Tensor) -> Tensor:
        """The first block's cue tokens from normalised pairs (:meth:`cue_pairs`): ``W_inj [mu ; t] + e_type``.

        Args:
            pairs: [B, k, 2D].

        Returns:
            [B, k, W].
        """
        return self.proj(pairs) + self.type_embedding

    def _pairs(self, class_idx: Tensor, prototypes: Tensor, text: Tensor, own: Tensor | None = None) -> Tensor:
        """``[mu_k ; t_k]`` (or ``[own ; t_k]``) for classes ``class_idx`` [B, k], normalised: [B, k, 2D]."""
        if prototypes.dim() != 2 or prototypes.shape != text.shape or prototypes.shape[1] != self.joint_dim:
            raise ValueError(
                f"prototypes and text must both be [K, {self.joint_dim}], got "
                f"{tuple(prototypes.shape)} and {tuple(text.shape)}"
            )
        dtype = self.proj.weight.dtype
        t = F.normalize(text.to(dtype), dim=-1)[class_idx]
        if own is None:
            visual = F.normalize(prototypes.detach().to(dtype), dim=-1)[class_idx]
        else:
            visual = F.normalize(own.detach().to(dtype), dim=-1)[:, None].expand(-1, class_idx.shape[1], -1)
        return torch.cat([visual, t], dim=-1)

    def cue_pairs(
        self, coarse_logits: Tensor, prototypes: Tensor, text: Tensor, own: Tensor | None = None
    ) -> Tuple[Tensor, Tensor]:
        """The top-k classes of ``coarse_logits`` and their normalised ``[visual ; text]`` pairs.

        Args: as :meth:`forward`.

        Returns:
            ``(pairs [B, k, 2D], topk_idx [B, k])`` with ``k = min(topk, K)``.
        """
        if coarse_logits.dim() != 2 or coarse_logits.shape[1] != prototypes.shape[0]:
            raise ValueError(f"coarse_logits must be [B, {prototypes.shape[0]}], got {tuple(coarse_logits.shape)}")
        k = min(self.topk, coarse_logits.shape[1])
        topk_idx = coarse_logits.detach().topk(k, dim=1).indices
        return self._pairs(topk_idx, prototypes, text, own), topk_idx

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
        pairs, topk_idx = self.cue_pairs(coarse_logits, prototypes, text, own)
        return VSIOutput(self.tokens(pairs), topk_idx)

    def deep_cues(self, pairs: Tensor) -> Tuple[Tensor, ...]:
        """The later blocks' cue tokens from :meth:`cue_pairs`: ``W_l [mu ; t] + e_type``, l = 2..depth.

        Returns:
            ``depth - 1`` tensors [B, k, W] (empty with ``depth`` 1).
        """
        return tuple(proj(pairs) + self.type_embedding for proj in self.deep)

    def extra_repr(self) -> str:
        return f"joint_dim={self.joint_dim}, width={self.width}, topk={self.topk}, depth={len(self.deep) + 1}"
