"""Oracle selections of the SFM's kept patches: controls that say what a right (or wrong) selection does.

``sfm_oracle`` replaces the SFM's choice of the kept patches (never its relevance map or its pooling
weights), so that a comparison can tell whether local selection can help at all on a testbed:

* ``mark``: the patches showing the cue first (most of its ink first), filled up by relevance;
* ``random``: as many patches, uniformly at random (a fresh draw every forward pass);
* ``anti``: the most relevant patches that do **not** show the cue.

The cue is found from the network's input alone: ``fmnist_badged`` draws its mark as the image's only
colour (:data:`usb_cfsg.datasets.fmnist_badged.MARK_RGB` on gray items), so a patch shows the mark
where its pixels' chroma (max minus min over R, G, B, after undoing the input normalisation) exceeds
:data:`CHROMA_MIN`. Geometric augmentations move the mark and the selection with it; RandAugment's
colour operations on strong views (Solarize, Color at low magnitude) can hide part of it there.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

#: ``sfm_oracle`` values.
ORACLE_MODES = ("none", "mark", "random", "anti")
#: Chroma (in [0, 1]) above which a pixel is the mark's ink; gray pixels have none.
CHROMA_MIN = 0.15


def mark_patches(x: Tensor, patch_size: int, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Share of each patch's pixels that show the coloured mark.

    Args:
        x: Normalised images [B, 3, H, W].
        patch_size: The ViT's patch side (H and W multiples of it).
        mean: The normalisation's per-channel mean.
        std: The normalisation's per-channel std.

    Returns:
        [B, N] in [0, 1], patches in row-major order (the ViT's token order).
    """
    m = torch.tensor(list(mean), dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(list(std), dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    raw = x * s + m
    chroma = raw.amax(dim=1, keepdim=True) - raw.amin(dim=1, keepdim=True)
    ink = (chroma > CHROMA_MIN).to(x.dtype)
    return F.avg_pool2d(ink, patch_size).flatten(1)


def oracle_keep(mode: str, relevance: Tensor, mark: Tensor, n_keep: int) -> Tensor:
    """Indices of the kept patches [B, n_keep] under an oracle mode.

    Args:
        mode: ``mark``, ``random`` or ``anti`` (:data:`ORACLE_MODES` less ``none``).
        relevance: The SFM's relevance [B, N] (fills up ``mark``, ranks ``anti``).
        mark: :func:`mark_patches` [B, N].
        n_keep: Patches to keep.

    Returns:
        Long [B, n_keep].
    """
    r = relevance.detach().float()
    r = r / r.sum(dim=1, keepdim=True).clamp_min(1e-12)  # in [0, 1]
    if mode == "mark":
        key = (mark > 0).float() * (2.0 + mark) + r  # every mark patch before every other; most ink first
    elif mode == "anti":
        key = r - 2.0 * (mark > 0).float()  # mark patches last
    elif mode == "random":
        key = torch.rand_like(r)
    else:
        raise ValueError(f"sfm_oracle must be one of {', '.join(ORACLE_MODES)}, got {mode!r}")
    return torch.sort(key, dim=1, descending=True, stable=True).indices[:, :n_keep]
