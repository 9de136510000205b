"""Relevance-map overlays: a patch-grid relevance (the CFSG semantic filter's ``relevance``) on an image."""
from __future__ import annotations

import math
import os
from typing import Union

import numpy as np
from PIL import Image

from .plots import _atomic_path

PathLike = Union[str, "os.PathLike[str]"]


def relevance_grid(relevance: np.ndarray) -> np.ndarray:
    """Reshape a relevance vector [N] over a sqrt(N) x sqrt(N) patch grid and scale it to [0, 1].

    Args:
        relevance: One value per patch, row-major (as ViT patch tokens are ordered).

    Returns:
        float64 array [g, g] in [0, 1] (min-max scaled; a constant map becomes all zeros).

    Raises:
        ValueError: Not a non-empty 1-D vector of finite values whose length is a square.
    """
    r = np.asarray(relevance, dtype=np.float64)
    if r.ndim != 1 or r.size == 0:
        raise ValueError(f"relevance must be a non-empty vector [N], got shape {r.shape}")
    side = math.isqrt(r.size)
    if side * side != r.size:
        raise ValueError(f"relevance has {r.size} values, which is not a square patch grid (g x g)")
    if not np.isfinite(r).all():
        raise ValueError("relevance has non-finite values")
    lo, hi = float(r.min()), float(r.max())
    r = (r - lo) / (hi - lo) if hi > lo else np.zeros_like(r)
    return r.reshape(side, side)


def save_relevance_overlay(image: Image.Image, relevance: np.ndarray, path: PathLike, alpha: float = 0.5,
                           cmap: str = "jet") -> str:
    """Save ``image`` with its relevance map blended on top as a PNG (atomic write).

    The [N] relevance vector is laid out on its sqrt(N) x sqrt(N) patch grid, min-max scaled,
    upsampled bilinearly to the image size, colour-mapped and alpha-blended over the image.
    Give the image the network saw (resized and centre-cropped), so patches line up.

    Args:
        image: The image (any mode; converted to RGB).
        relevance: One value per patch [N], row-major.
        path: Output file (PNG).
        alpha: Opacity of the colour map, in [0, 1].
        cmap: A matplotlib colormap name.

    Returns:
        ``path`` as a string.

    Raises:
        ValueError: Malformed relevance or alpha outside [0, 1].
    """
    from matplotlib import colormaps

    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    grid = relevance_grid(relevance)
    rgb = image.convert("RGB")
    width, height = rgb.size
    heat = Image.fromarray(grid.astype(np.float32), mode="F").resize((width, height), Image.BILINEAR)
    heat_arr = np.clip(np.asarray(heat, dtype=np.float64), 0.0, 1.0)
    colours = colormaps[cmap](heat_arr)[..., :3] * 255.0
    base = np.asarray(rgb, dtype=np.float64)
    blended = np.clip((1.0 - alpha) * base + alpha * colours, 0, 255).round().astype(np.uint8)
    final = os.fspath(path)
    with _atomic_path(final) as tmp:
        Image.fromarray(blended, mode="RGB").save(tmp, format="PNG")
    return final


__all__ = ["relevance_grid", "save_relevance_overlay"]


def view_transform(img_size: int, crop_ratio: float):
    """The evaluation transform without ToTensor/Normalize: the crop the network sees, as a PIL image."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(int(math.floor(int(img_size) / float(crop_ratio)))), T.CenterCrop(int(img_size))])


def _relevance_hook_base():
    from semilearn.core.hooks import Hook

    return Hook


class RelevanceHook(_relevance_hook_base()):
    """With ``relevance_dir`` set, save relevance overlays of a fixed set of eval images during training.

    The first ``num_images`` images of the eval set (seen-class test images, always the same ones)
    are drawn after every evaluation (``<relevance_dir>/iter_<n>/``) and at the end
    (``<relevance_dir>/final/``), with the EMA weights the evaluation uses. File names carry the
    image index and its class. Only rank 0 writes; nets without a ``relevance`` output are skipped
    with one warning.

    Args:
        num_images: How many eval images to draw.
    """

    def __init__(self, num_images: int = 8) -> None:
        self.num_images = num_images
        self._disabled = False

    def save(self, algorithm, tag: str) -> None:
        """Draw the overlays into ``<relevance_dir>/<tag>/`` (eval.py calls this with tag ``eval``)."""
        import torch

        args = algorithm.args
        if self._disabled or not args.relevance_dir or args.rank != 0:
            return
        ds = algorithm.dataset_dict["eval"]
        idx = list(range(min(self.num_images, len(ds))))
        images = [ds.__sample__(i)[0] for i in idx]
        x = torch.stack([ds.transform(img) for img in images]).to(algorithm.device)
        model = algorithm.model
        model.eval()
        algorithm.ema.apply_shadow()
        try:
            with torch.no_grad(), algorithm.amp_cm():
                out = model(x)
        finally:
            algorithm.ema.restore()
            model.train()
        if not isinstance(out, dict) or "relevance" not in out:
            algorithm.print_fn(f"relevance_dir: algorithm {algorithm.algorithm!r} produces no relevance map; skipped")
            self._disabled = True
            return
        rel = out["relevance"].float().cpu().numpy()
        view = view_transform(args.img_size, args.crop_ratio)
        names = algorithm.openset_info.seen_class_names if algorithm.openset_info is not None else None
        folder = os.path.join(args.relevance_dir, tag)
        for j, i in enumerate(idx):
            label = int(ds.targets[i])
            cls = (names[label] if names else str(label)).replace(" ", "_").replace("/", "-")
            save_relevance_overlay(view(images[j]), rel[j], os.path.join(folder, f"{i:03d}_{cls}.png"))
        algorithm.print_fn(f"relevance maps of {len(idx)} eval images saved to {folder}")

    def after_train_step(self, algorithm) -> None:
        if self.every_n_iters(algorithm, algorithm.num_eval_iter):
            self.save(algorithm, f"iter_{algorithm.it + 1}")

    def after_run(self, algorithm) -> None:
        self.save(algorithm, "final")
