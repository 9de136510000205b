"""Localization metrics: does a net's patch relevance map point at the object's box?

For datasets whose test images carry an object box (``fmnist_cluttered``: the item among the clutter;
``OpenSetInfo.test_boxes``) and nets that output a patch map ``relevance`` [N, P] over their
``g x g`` patch grid (cfsg_clip: the SFM relevance; clip_zeroshot: GL-MCM's per-patch local MCM),
the evaluator reports, over the open-set test images:

* ``pointing_acc`` -- fraction of images whose most relevant patch (ties: the first) touches the box;
* ``mass_in_box`` -- mean share of the map's total over the patches touching the box (the SFM
  relevance is a distribution, so this is its probability mass there; a non-negative map such as
  GL-MCM's is divided by its sum);
* ``kept_in_box`` -- mean fraction of the *kept* patches that touch the box: the SFM's kept patches
  (the net's ``keep_idx``) where the net has them, otherwise the map's top ``keep_ratio`` patches
  (``keep_source`` says which);
* ``chance`` -- the chance level of all three: the mean share of the grid's patches that touch the
  box (what a uniformly random patch, a uniform map, or a random choice of kept patches scores).

A patch *touches* the box when they overlap with positive area, in the coordinates of the network's
input: the box (fractions of the square source image) goes through the evaluation transform
(resize the side to ``floor(img_size / crop_ratio)``, centre crop ``img_size``), and patch ``(r, c)``
covers ``[c * p, (c + 1) * p) x [r * p, (r + 1) * p)`` with ``p = img_size / g``. Each figure is
also given for seen-class and unseen-class images separately (``seen``, ``unseen``).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import numpy as np

#: The metrics of one group of images, in file order.
LOCALIZATION_KEYS = ("num_images", "pointing_acc", "mass_in_box", "kept_in_box", "chance")
#: The keep ratio used for maps without the net's own kept patches (the SFM's default rho).
DEFAULT_KEEP_RATIO = 0.25


def box_patch_mask(boxes: np.ndarray, grid: int, img_size: int, crop_ratio: float) -> np.ndarray:
    """Which patches of a ``grid`` x ``grid`` ViT input each box touches.

    Args:
        boxes: [B, 4] ``(x0, y0, x1, y1)`` as fractions of a square source image (x1, y1 exclusive).
        grid: g, patches per side.
        img_size: The network's input side in pixels.
        crop_ratio: The evaluation transform's crop ratio.

    Returns:
        bool [B, g * g], row-major like ViT patch tokens.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    resized = int(math.floor(int(img_size) / float(crop_ratio)))
    offset = int(round((resized - int(img_size)) / 2.0))  # torchvision CenterCrop
    view = boxes * resized - offset  # box in the network's input pixels
    view = np.clip(view, 0.0, float(img_size))
    p = float(img_size) / grid
    lo = np.arange(grid) * p
    hi = lo + p
    cols = (view[:, 0:1] < hi[None]) & (view[:, 2:3] > lo[None])  # [B, g]
    rows = (view[:, 1:2] < hi[None]) & (view[:, 3:4] > lo[None])
    return (rows[:, :, None] & cols[:, None, :]).reshape(len(boxes), grid * grid)


def _group(mask: np.ndarray, rel: np.ndarray, kept: np.ndarray) -> Dict[str, Any]:
    n = int(mask.shape[0])
    if n == 0:
        return {"num_images": 0, "pointing_acc": None, "mass_in_box": None, "kept_in_box": None, "chance": None}
    top = rel.argmax(axis=1)
    total = rel.sum(axis=1)
    mass = np.where(total > 0, (rel * mask).sum(axis=1) / np.where(total > 0, total, 1.0), np.nan)
    kept_in = np.take_along_axis(mask, kept, axis=1).mean(axis=1)
    return {
        "num_images": n,
        "pointing_acc": float(mask[np.arange(n), top].mean()),
        "mass_in_box": float(np.nanmean(mass)) if np.isfinite(mass).any() else None,
        "kept_in_box": float(kept_in.mean()),
        "chance": float(mask.mean()),
    }


def localization_metrics(
    relevance: np.ndarray,
    boxes: np.ndarray,
    img_size: int,
    crop_ratio: float,
    *,
    keep_idx: Optional[np.ndarray] = None,
    keep_ratio: float = DEFAULT_KEEP_RATIO,
    unknown: Optional[np.ndarray] = None,
    map_name: str = "relevance",
) -> Optional[Dict[str, Any]]:
    """Pointing accuracy, relevance mass in the box and kept patches in the box, beside chance.

    Args:
        relevance: The patch maps [B, P] (P = g * g), non-negative (higher = more relevant).
        boxes: The object boxes [B, 4], fractions of the square source image.
        img_size: The network's input side.
        crop_ratio: The evaluation transform's crop ratio.
        keep_idx: The net's kept patches [B, n_keep] (any float or int dtype); None: the map's top
            ``keep_ratio`` patches.
        keep_ratio: See ``keep_idx``.
        unknown: bool [B], True for unseen-class images (adds the ``seen`` / ``unseen`` groups).
        map_name: What the map is, recorded as ``map``.

    Returns:
        ``{"map", "grid", "keep_source", "num_images", "pointing_acc", "mass_in_box", "kept_in_box",
        "chance", "num_box_outside", "seen": {...}, "unseen": {...}}``; None when the map is constant
        on every image (e.g. ``use_sfm: false``, whose relevance is uniform): nothing to point with.

    Raises:
        ValueError: Shapes that do not match, or a patch count that is not a square.
    """
    rel = np.asarray(relevance, dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float64)
    if rel.ndim != 2 or boxes.shape != (rel.shape[0], 4):
        raise ValueError(f"relevance [B, P] and boxes [B, 4] expected, got {rel.shape} and {boxes.shape}")
    grid = math.isqrt(rel.shape[1])
    if grid * grid != rel.shape[1] or grid == 0:
        raise ValueError(f"relevance has {rel.shape[1]} patches, not a square grid")
    if rel.shape[0] == 0 or np.all(np.ptp(rel, axis=1) == 0):
        return None
    mask = box_patch_mask(boxes, grid, img_size, crop_ratio)
    if keep_idx is not None:
        kept = np.asarray(keep_idx).astype(np.int64)
        keep_source = f"the net's kept patches ({kept.shape[1]} of {rel.shape[1]})"
    else:
        from ..modules.semantic_filter import keep_count

        n_keep = keep_count(rel.shape[1], keep_ratio)
        kept = np.argsort(-rel, axis=1, kind="stable")[:, :n_keep]
        keep_source = f"the map's top {n_keep} of {rel.shape[1]} patches (keep ratio {keep_ratio:g})"
    inside = mask.any(axis=1)  # a box the crop removed entirely is left out
    out: Dict[str, Any] = {"map": map_name, "grid": grid, "keep_source": keep_source}
    out.update(_group(mask[inside], rel[inside], kept[inside]))
    out["num_box_outside"] = int((~inside).sum())
    if unknown is not None:
        unknown = np.asarray(unknown, dtype=bool)
        for name, sel in (("seen", ~unknown & inside), ("unseen", unknown & inside)):
            out[name] = _group(mask[sel], rel[sel], kept[sel])
    return out


def localization_scalars(loc: Optional[Dict[str, Any]], prefix: str) -> Dict[str, float]:
    """TensorBoard scalars ``<prefix>loc/<metric>`` (and ``loc/<group>/<metric>``) of a record."""
    if not loc:
        return {}
    out: Dict[str, float] = {}
    for group, values in [("", loc)] + [(f"{g}/", loc[g]) for g in ("seen", "unseen") if isinstance(loc.get(g), dict)]:
        for key in LOCALIZATION_KEYS[1:]:
            v = values.get(key)
            if v is not None and math.isfinite(float(v)):
                out[f"{prefix}loc/{group}{key}"] = float(v)
    return out


__all__ = ["DEFAULT_KEEP_RATIO", "LOCALIZATION_KEYS", "box_patch_mask", "localization_metrics", "localization_scalars"]
