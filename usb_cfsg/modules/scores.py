"""Semantic unknown scores (MCM, GL-MCM) and score fusion.

Sign convention, for every score in this project: **higher = more unknown** (more likely an
unseen-class / out-of-distribution sample). AUROC and FPR@95 treat "unknown" as the positive class.

- MCM (Ming et al., NeurIPS 2022): ``S_MCM(x) = max_k softmax_k(cos(x, t_k) / T)``, higher =
  in-distribution, in [1/K, 1]. We return ``mcm_score = 1 - S_MCM`` in [0, 1 - 1/K].
- GL-MCM (Miyai et al., 2023): ``S_GL = S_MCM(x_global) + max_i S_MCM(x_local_i)``, the global
  MCM plus the largest MCM over local features (patches), in [2/K, 2], higher = in-distribution.
  We return ``glmcm_score = 1 - S_GL / 2`` in [0, 1 - 1/K] (same scale as ``mcm_score``; the
  ordering is exactly the reverse of S_GL's, so AUROC is unchanged).

Both use temperature T = 1 by default, as the MCM and GL-MCM papers do. Note that at T = 1 with K
in the hundreds, the scores lie in a narrow band just below 1 - 1/K; ranking metrics do not care,
but fusion with other scores does (see :func:`fused_score`'s ``ranges``).
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_MCM_TEMPERATURE = 1.0


def max_softmax_cosine(feat: Tensor, text: Tensor, temperature: float = DEFAULT_MCM_TEMPERATURE) -> Tensor:
    """``max_k softmax_k(cos(feat, t_k) / T)`` over the last dimension.

    Args:
        feat: [..., D].
        text: [K, D].
        temperature: T > 0.

    Returns:
        [...] values in [1/K, 1] (higher = more in-distribution).
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if text.dim() != 2 or feat.shape[-1] != text.shape[1]:
        raise ValueError(f"expected feat [..., D] and text [K, D], got {tuple(feat.shape)} and {tuple(text.shape)}")
    cos = F.normalize(feat, dim=-1) @ F.normalize(text.to(feat.dtype), dim=-1).t()
    return (cos / temperature).softmax(dim=-1).max(dim=-1).values


def mcm_score(feat: Tensor, text: Tensor, temperature: float = DEFAULT_MCM_TEMPERATURE) -> Tensor:
    """MCM unknown score ``1 - max_k softmax_k(cos(feat, t_k) / T)``.

    Args:
        feat: Image features [B, D].
        text: Seen-class text embeddings [K, D].
        temperature: T (default 1.0).

    Returns:
        [B], in [0, 1 - 1/K]; higher = more unknown.
    """
    if feat.dim() != 2:
        raise ValueError(f"feat must be [B, D], got {tuple(feat.shape)}")
    return 1.0 - max_softmax_cosine(feat, text, temperature)


def glmcm_score(
    global_feat: Tensor, local_feat: Tensor, text: Tensor, temperature: float = DEFAULT_MCM_TEMPERATURE
) -> Tensor:
    """GL-MCM unknown score ``1 - (S_MCM(g) + max_i S_MCM(l_i)) / 2``.

    Args:
        global_feat: g [B, D].
        local_feat: Either one local feature per image [B, D] (e.g. the SFM's filtered local
            feature; the max over patches is then over a single one) or local/patch features
            [B, N, D] (e.g. all patches, or only the kept ones gathered with ``keep_idx``).
        text: [K, D].
        temperature: T, shared by the global and local terms (default 1.0).

    Returns:
        [B], in [0, 1 - 1/K]; higher = more unknown.
    """
    if global_feat.dim() != 2:
        raise ValueError(f"global_feat must be [B, D], got {tuple(global_feat.shape)}")
    if local_feat.dim() == 2:
        local_feat = local_feat.unsqueeze(1)
    if local_feat.dim() != 3 or local_feat.shape[0] != global_feat.shape[0]:
        raise ValueError(
            f"local_feat must be [B, D] or [B, N, D] with B={global_feat.shape[0]}, got {tuple(local_feat.shape)}"
        )
    s_global = max_softmax_cosine(global_feat, text, temperature)  # [B]
    s_local = max_softmax_cosine(local_feat, text, temperature).max(dim=1).values  # [B]
    return 1.0 - 0.5 * (s_global + s_local)


def fit_score_range(score: Tensor, quantiles: tuple[float, float] = (0.01, 0.99)) -> tuple[float, float]:
    """A robust ``(lo, hi)`` range of a score from its quantiles, for :func:`fused_score`.

    Args:
        score: [N] scores of a reference set (e.g. all evaluation images, or labeled images).
        quantiles: Lower and upper quantile (default 1% and 99%).

    Returns:
        ``(lo, hi)`` as floats, with ``hi > lo`` (``hi = lo + 1e-6`` for a constant score).
    """
    q_lo, q_hi = quantiles
    if not 0.0 <= q_lo < q_hi <= 1.0:
        raise ValueError(f"quantiles must satisfy 0 <= low < high <= 1, got {quantiles}")
    s = score.detach().flatten().float()
    if s.numel() == 0:
        raise ValueError("cannot fit a range on an empty score")
    lo = float(torch.quantile(s, q_lo))
    hi = float(torch.quantile(s, q_hi))
    return lo, max(hi, lo + 1e-6)


def fused_score(
    scores: Mapping[str, Tensor],
    weights: Mapping[str, float] | None = None,
    ranges: Mapping[str, tuple[float, float]] | None = None,
) -> Tensor:
    """Weighted mean of unknown scores, each first mapped to [0, 1].

    Mapping: a score with an entry ``(lo, hi)`` in ``ranges`` becomes
    ``clamp((s - lo) / (hi - lo), 0, 1)`` (monotone, so it keeps the score's ranking); a score
    without one is assumed to be in [0, 1] already (true of ``ova``, ``mcm`` and ``glmcm``) and
    only clamped. The result is ``sum_n w_n s_n / sum_n w_n`` over the scores named in
    ``weights`` (all scores with equal weights when ``weights`` is None); scores not named in
    ``weights`` are ignored.

    Since MCM-type scores at T = 1 occupy a narrow band, pass ``ranges`` fitted with
    :func:`fit_score_range` when fusing them with OVA, otherwise the OVA score dominates.

    Args:
        scores: name -> [B] score (higher = more unknown), e.g. ``{"ova": u, "glmcm": s}``.
        weights: name -> non-negative weight (None: equal).
        ranges: name -> ``(lo, hi)``, ``hi > lo``.

    Returns:
        [B], in [0, 1]; higher = more unknown.
    """
    if not scores:
        raise ValueError("fused_score needs at least one score")
    if weights is None:
        weights = {name: 1.0 for name in scores}
    missing = [name for name in weights if name not in scores]
    if missing:
        raise KeyError(f"weights name scores that were not given: {missing}; given: {sorted(scores)}")
    if any(w < 0 for w in weights.values()) or not sum(weights.values()) > 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {dict(weights)}")
    ranges = ranges or {}
    total = None
    for name, w in weights.items():
        s = scores[name]
        if s.dim() != 1:
            raise ValueError(f"score {name!r} must be [B], got {tuple(s.shape)}")
        if name in ranges:
            lo, hi = ranges[name]
            if not hi > lo:
                raise ValueError(f"range of {name!r} must have hi > lo, got {(lo, hi)}")
            s = (s - lo) / (hi - lo)
        term = w * s.clamp(0.0, 1.0)
        total = term if total is None else total + term
    assert total is not None  # weights is non-empty (checked above)
    return total / sum(weights.values())
