"""Semantic filtering module (SFM) of the coarse-guidance branch.

Given the global feature ``g``, the patch features ``p_1..p_N`` (all in CLIP's joint space) and the
seen-class text embeddings ``t_1..t_K``, the SFM

1. computes the class posterior ``pi = softmax(s * cos(g, t))``                       [B, K]
2. computes the patch-class affinity ``A_ik = cos(a_i, t_k)`` on the dense features
   ``a`` (``affinity_feat``; the patch features themselves when not given)               [B, N, K]
3. turns it into a relevance distribution over patches                                 [B, N]
   ``r_i = sum_k pi_k * softmax_i(A_ik / tau_f)`` (``relevance="patches"``, the default: the share
   of class k's evidence that lies at patch i), or ``r_i ∝ sum_k pi_k * softmax_k(A_ik / tau_f)``
   (``relevance="classes"``: how surely patch i shows the classes the image is believed to show,
   the per-patch class posterior GL-MCM's local map reads; renormalised over i), or as ``patches`` on
   the contrastive affinity ``A_ik - mean_j A_ij`` (``relevance="contrastive"``: what makes patch i
   look like class k *rather than the other classes*, as CLIP Surgery removes the classes' shared
   direction; a patch equally like every class, e.g. the item's plain body when classes differ only
   by a mark, gets no credit). Non-negative, sums to 1 over i.
4. keeps the ``n_keep = keep_count(N)`` most relevant patches                           [B, n_keep]
5. pools them into the local feature ``f = sum_kept r_i p_i / sum_kept r_i``            [B, D]
6. mixes the coarse feature ``z_c = normalize(normalize(g) + lambda_f * normalize(f))``  [B, D]

The coarse logits ``s * cos(z_c, W_c)`` are computed by the network with a
:class:`~usb_cfsg.modules.cosine_classifier.CosineClassifier`; the ``use_sfm=False`` ablation
(no filtering, ``z_c = g``) is also the network's business.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: CLIP's learned logit scale (exp(logit_scale) = 100 in every released CLIP): the posterior
#: ``pi`` compares the (initially pretrained) global feature with frozen text embeddings, exactly
#: CLIP's zero-shot classifier, so its native scale is the natural default.
DEFAULT_SFM_LOGIT_SCALE = 100.0
#: Temperature of the softmax over patches. CLIP's initial temperature 0.07: a cosine gap of 0.2
#: between two patches becomes a relevance ratio of exp(0.2 / 0.07) ~= 17.
DEFAULT_SFM_TEMPERATURE = 0.07
DEFAULT_KEEP_RATIO = 0.25
DEFAULT_LOCAL_WEIGHT = 1.0
#: The axes the affinity softmax may run over (``sfm_relevance``), see :class:`SemanticFilter`.
RELEVANCE_RULES = ("patches", "classes", "contrastive")


def keep_count(num_patches: int, keep_ratio: float) -> int:
    """Number of patches the SFM keeps: ``max(1, floor(keep_ratio * N + 0.5))``, at most N.

    Rounding is half-up (not Python's banker's rounding), e.g. N=196, rho=0.25 -> 49;
    N=16, rho=0.25 -> 4; N=10, rho=0.25 -> 3 (2.5 rounds up); N=3, rho=0.1 -> 1.

    Args:
        num_patches: N, the number of patch tokens (>= 1).
        keep_ratio: rho in (0, 1].

    Returns:
        The count, in [1, N].
    """
    if num_patches < 1:
        raise ValueError(f"num_patches must be >= 1, got {num_patches}")
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    return min(num_patches, max(1, int(math.floor(keep_ratio * num_patches + 0.5))))


def gather_tokens(tokens: Tensor, index: Tensor) -> Tensor:
    """Select tokens per sample: ``out[b, j] = tokens[b, index[b, j]]``.

    Useful to pick the kept patch tokens (of any width, e.g. the ViT tokens H) with
    :attr:`SFMOutput.keep_idx`.

    Args:
        tokens: [B, N, C].
        index: Long tensor [B, n] with values in [0, N).

    Returns:
        [B, n, C]; differentiable with respect to ``tokens``.
    """
    if tokens.dim() != 3 or index.dim() != 2 or index.shape[0] != tokens.shape[0]:
        raise ValueError(
            f"expected tokens [B, N, C] and index [B, n], got {tuple(tokens.shape)} and {tuple(index.shape)}"
        )
    return tokens.gather(1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


@dataclass
class SFMOutput:
    """What :class:`SemanticFilter` returns.

    Attributes:
        class_probs: pi, the class posterior from the global feature [B, K]; rows sum to 1.
        affinity: A, the patch-text cosine similarities [B, N, K], in [-1, 1].
        relevance: r, the patch relevance [B, N]; non-negative, rows sum to 1 (a distribution
            over all N patches, not only the kept ones). Reshape to the patch grid to look at it.
        keep_idx: Indices of the kept patches [B, n_keep], ordered by decreasing relevance
            (ties: lower patch index first).
        keep_mask: Boolean mask of the kept patches [B, N].
        local: f, the relevance-weighted mean of the kept patch features [B, D] (same scale as
            the patch features, not normalised).
        coarse: z_c, the unit-norm coarse feature [B, D].
    """

    class_probs: Tensor
    affinity: Tensor
    relevance: Tensor
    keep_idx: Tensor
    keep_mask: Tensor
    local: Tensor
    coarse: Tensor


class SemanticFilter(nn.Module):
    """Text-guided patch filtering and pooling (the SFM); has no trainable parameters.

    Args:
        keep_ratio: rho, fraction of patches kept (see :func:`keep_count` for the rounding).
            Default 0.25.
        temperature: tau_f of the softmax over patches. Default 0.07.
        logit_scale: s of the class posterior ``softmax(s * cos(g, t))``. Default 100 (CLIP's).
        local_weight: lambda_f, weight of the local direction in
            ``z_c = normalize(normalize(g) + lambda_f * normalize(f))``. Default 1.0. Both terms are
            normalised before mixing so that lambda_f is a scale-free ratio of directions
            (lambda_f = 1: z_c bisects g and f); lambda_f = 0 gives ``z_c = normalize(g)``.
        detach_relevance: Stop gradients through the relevance weights (and so through pi and
            the affinity features): the local feature is then a fixed-weight pooling of the
            patches. Default False (gradients flow everywhere).
        relevance: ``patches`` (softmax over the patches per class: the patches most like class k
            win, even where every patch is a poor match) or ``classes`` (softmax over the classes
            per patch, then renormalised over patches: patches that are sure of the believed classes
            win, and patches equally like every class, such as empty background, lose). Default
            ``patches``. ``contrastive``: as ``patches`` on the affinity minus its mean over the classes.

    Inputs are taken as given (unnormalised is fine): cosines normalise internally, and the local
    feature pools the raw patch features.
    """

    def __init__(
        self,
        keep_ratio: float = DEFAULT_KEEP_RATIO,
        temperature: float = DEFAULT_SFM_TEMPERATURE,
        logit_scale: float = DEFAULT_SFM_LOGIT_SCALE,
        local_weight: float = DEFAULT_LOCAL_WEIGHT,
        detach_relevance: bool = False,
        relevance: str = "patches",
    ) -> None:
        super().__init__()
        if relevance not in RELEVANCE_RULES:
            raise ValueError(f"relevance must be one of {', '.join(RELEVANCE_RULES)}, got {relevance!r}")
        if not 0.0 < keep_ratio <= 1.0:
            raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if not logit_scale > 0:
            raise ValueError(f"logit_scale must be positive, got {logit_scale}")
        if local_weight < 0:
            raise ValueError(f"local_weight must be >= 0, got {local_weight}")
        self.keep_ratio = float(keep_ratio)
        self.temperature = float(temperature)
        self.logit_scale = float(logit_scale)
        self.local_weight = float(local_weight)
        self.detach_relevance = bool(detach_relevance)
        self.relevance = relevance

    def keep_count(self, num_patches: int) -> int:
        """How many of ``num_patches`` patches are kept (see :func:`keep_count`)."""
        return keep_count(num_patches, self.keep_ratio)

    def class_posterior(self, global_feat: Tensor, text: Tensor) -> Tensor:
        """``pi = softmax(s * cos(g, t))``: [B, D], [K, D] -> [B, K]."""
        g = F.normalize(global_feat, dim=-1)
        t = F.normalize(text.to(g.dtype), dim=-1)
        return (self.logit_scale * g @ t.t()).softmax(dim=-1)

    def forward(
        self, global_feat: Tensor, patch_feat: Tensor, text: Tensor, affinity_feat: Tensor | None = None
    ) -> SFMOutput:
        """Filter the patches and build the local and coarse features.

        Args:
            global_feat: g, the global (class-token) feature [B, D].
            patch_feat: p, the patch features [B, N, D], pooled into the local feature.
            text: t, the seen-class text embeddings [K, D].
            affinity_feat: The dense features [B, N, D] the patch-text affinity A is computed on
                (e.g. MaskCLIP-style value-path features); defaults to ``patch_feat``.

        Returns:
            An :class:`SFMOutput`.
        """
        if global_feat.dim() != 2 or patch_feat.dim() != 3 or text.dim() != 2:
            raise ValueError(
                "expected global_feat [B, D], patch_feat [B, N, D], text [K, D], got "
                f"{tuple(global_feat.shape)}, {tuple(patch_feat.shape)}, "
                f"{tuple(text.shape)}"
            )
        B, N, D = patch_feat.shape
        if global_feat.shape != (B, D) or text.shape[1] != D:
            raise ValueError(
                f"inconsistent shapes: global_feat {tuple(global_feat.shape)}, "
                f"patch_feat {tuple(patch_feat.shape)}, text {tuple(text.shape)}"
            )
        dense = patch_feat if affinity_feat is None else affinity_feat
        if dense.shape != patch_feat.shape:
            raise ValueError(f"affinity_feat must have shape {tuple(patch_feat.shape)}, got {tuple(dense.shape)}")
        pi, affinity, relevance, keep_idx, keep_mask = self.select(global_feat, dense, text)
        local, coarse = self.pool(global_feat, gather_tokens(patch_feat, keep_idx), relevance, keep_idx)
        return SFMOutput(
            class_probs=pi,
            affinity=affinity,
            relevance=relevance,
            keep_idx=keep_idx,
            keep_mask=keep_mask,
            local=local,
            coarse=coarse,
        )

    def select(self, global_feat: Tensor, dense: Tensor, text: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Steps 1-4: which patches to keep, from the dense features alone.

        Split from :meth:`forward` so that a network can compute the patch features of the kept
        patches only (CFSGNet runs the last block just for them).

        Args:
            global_feat: g [B, D].
            dense: The affinity features [B, N, D].
            text: t [K, D].

        Returns:
            ``(class_probs, affinity, relevance, keep_idx, keep_mask)`` as in :class:`SFMOutput`.
        """
        B, N, _ = dense.shape
        t = F.normalize(text.to(dense.dtype), dim=-1)  # [K, D]
        pi = self.class_posterior(global_feat, t)  # [B, K]
        affinity = F.normalize(dense, dim=-1) @ t.t()  # [B, N, K]
        if self.relevance in ("patches", "contrastive"):
            a = affinity - affinity.mean(dim=2, keepdim=True) if self.relevance == "contrastive" else affinity
            per_class = (a / self.temperature).softmax(dim=1)  # over patches
            relevance = torch.einsum("bnk,bk->bn", per_class, pi)  # [B, N]
        else:
            per_patch = (affinity / self.temperature).softmax(dim=2)  # over classes
            relevance = torch.einsum("bnk,bk->bn", per_patch, pi)
            relevance = relevance / relevance.sum(dim=1, keepdim=True)

        n_keep = self.keep_count(N)
        order = torch.sort(relevance.detach(), dim=1, descending=True, stable=True).indices
        keep_idx = order[:, :n_keep]  # [B, n_keep]
        keep_mask = torch.zeros(B, N, dtype=torch.bool, device=dense.device)
        keep_mask.scatter_(1, keep_idx, True)
        return pi, affinity, relevance, keep_idx, keep_mask

    def pool(
        self, global_feat: Tensor, kept_feat: Tensor, relevance: Tensor, keep_idx: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Steps 5-6: the local feature from the kept patches' features, and the coarse feature.

        Args:
            global_feat: g [B, D].
            kept_feat: The patch features of the kept patches [B, n_keep], in ``keep_idx`` order.
            relevance: r [B, N] from :meth:`select`.
            keep_idx: [B, n_keep] from :meth:`select`.

        Returns:
            ``(local, coarse)`` as in :class:`SFMOutput`.
        """
        weights = relevance.detach() if self.detach_relevance else relevance
        w_kept = weights.gather(1, keep_idx)  # [B, n_keep]
        w_kept = w_kept / w_kept.sum(dim=1, keepdim=True).clamp_min(torch.finfo(w_kept.dtype).tiny)
        local = torch.einsum("bn,bnd->bd", w_kept, kept_feat)
        coarse = F.normalize(F.normalize(global_feat, dim=-1) + self.local_weight * F.normalize(local, dim=-1), dim=-1)
        return local, coarse

    def extra_repr(self) -> str:
        return (
            f"keep_ratio={self.keep_ratio}, temperature={self.temperature}, "
            f"logit_scale={self.logit_scale}, local_weight={self.local_weight}, "
            f"detach_relevance={self.detach_relevance}, relevance={self.relevance}"
        )
