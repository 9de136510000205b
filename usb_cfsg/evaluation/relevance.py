"""Relevance-map overlays: a patch-grid relevance (the CFSG semantic filter's ``relevance``) on an image.

Two renderings:

* :func:`save_relevance_figure` (predict.py, eval.py, training's ``relevance_dir``): the original
  image at its own size (short side at least :data:`MIN_FIGURE_SIDE` px, long side at most
  :data:`MAX_FIGURE_SIDE`, so small inputs stay readable and huge photos stay small), the map
  drawn over the centre crop the network saw (the rest is dimmed), a colour bar of the min-max
  scaled relevance, and a title (the predicted class). The title is also stored as the PNG's
  ``Title`` text chunk.
* :func:`save_relevance_overlay`: the bare blend over an image of the network's view, same size.
"""

from __future__ import annotations

import math
import os
from typing import Optional, Sequence, Tuple, Union

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


def save_relevance_overlay(
    image: Image.Image, relevance: np.ndarray, path: PathLike, alpha: float = 0.5, cmap: str = "jet"
) -> str:
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
    heat = Image.fromarray(grid.astype(np.float32), mode="F").resize((width, height), Image.Resampling.BILINEAR)
    heat_arr = np.clip(np.asarray(heat, dtype=np.float64), 0.0, 1.0)
    colours = colormaps[cmap](heat_arr)[..., :3] * 255.0
    base = np.asarray(rgb, dtype=np.float64)
    blended = np.clip((1.0 - alpha) * base + alpha * colours, 0, 255).round().astype(np.uint8)
    final = os.fspath(path)
    with _atomic_path(final) as tmp:
        Image.fromarray(blended, mode="RGB").save(tmp, format="PNG")
    return final


#: Short side (px) below which figures are scaled up, so that title and colour bar stay readable.
MIN_FIGURE_SIDE = 256
#: Long side (px) above which figures are scaled down.
MAX_FIGURE_SIDE = 2048
_COLORBAR_PX = 90
_TITLE_PX = 34


def crop_box(width: int, height: int, img_size: int, crop_ratio: float) -> Tuple[float, float, float, float]:
    """The region of a ``width`` x ``height`` image that the evaluation transform keeps, in its pixels.

    The transform resizes the short side to ``floor(img_size / crop_ratio)`` (torchvision ``Resize``)
    and centre-crops ``img_size`` x ``img_size``; this maps that crop back to the original image.

    Returns:
        ``(left, top, right, bottom)`` in original pixel coordinates, clipped to the image.
    """
    size = int(math.floor(int(img_size) / float(crop_ratio)))
    short, long_ = (width, height) if width <= height else (height, width)
    new_long = int(size * long_ / short)
    new_w, new_h = (size, new_long) if width <= height else (new_long, size)
    left = int(round((new_w - img_size) / 2.0))
    top = int(round((new_h - img_size) / 2.0))
    sx, sy = width / new_w, height / new_h
    box = (left * sx, top * sy, (left + img_size) * sx, (top + img_size) * sy)
    return max(0.0, box[0]), max(0.0, box[1]), min(float(width), box[2]), min(float(height), box[3])


def _title_lines(title: str, width_px: int) -> Tuple[list, float]:
    """The title wrapped to at most two lines that fit ``width_px``, and the font size (points) to use."""
    import textwrap

    if not title:
        return [], 0.0
    for fontsize in (11.0, 9.0, 7.5, 6.5):
        per_line = max(8, int(width_px / (0.62 * fontsize * 100.0 / 72.0)))  # average glyph width ~0.62 em
        lines = textwrap.wrap(title, per_line)
        if len(lines) <= 2:
            return lines, fontsize
    return textwrap.wrap(title, per_line)[:2], 6.5


def save_relevance_figure(
    image: Image.Image,
    relevance: np.ndarray,
    path: PathLike,
    *,
    title: Optional[str] = None,
    img_size: Optional[int] = None,
    crop_ratio: Optional[float] = None,
    alpha: float = 0.5,
    cmap: str = "jet",
    box: Optional[Sequence[float]] = None,
) -> str:
    """Save the relevance map over the original image with a colour bar and a title (atomic PNG write).

    Args:
        image: The original input image (any mode; converted to RGB).
        relevance: One value per patch [N], row-major, of the network's input crop.
        path: Output file (PNG).
        title: Figure title, e.g. the predicted class; also the PNG's ``Title`` text chunk.
        img_size: The network's input size; with ``crop_ratio``, the map covers the centre crop the
            evaluation transform takes (:func:`crop_box`). None: the map covers the whole image.
        crop_ratio: The evaluation transform's crop ratio.
        alpha: Opacity of the colour map, in [0, 1].
        cmap: A matplotlib colormap name.
        box: The object's box ``(x0, y0, x1, y1)`` as fractions of the original image's width and
            height (datasets with boxes, e.g. ``fmnist_cluttered``), drawn as a white rectangle.

    Returns:
        ``path`` as a string.

    Raises:
        ValueError: Malformed relevance or alpha outside [0, 1].
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    grid = relevance_grid(relevance)
    rgb = image.convert("RGB")
    width, height = rgb.size
    scale = max(1.0, MIN_FIGURE_SIDE / min(width, height))
    scale = min(scale, MAX_FIGURE_SIDE / max(width * scale, height * scale) * scale)
    shown_w, shown_h = max(1, int(round(width * scale))), max(1, int(round(height * scale)))
    if (shown_w, shown_h) != (width, height):
        rgb = rgb.resize((shown_w, shown_h), Image.Resampling.BICUBIC)
    if img_size is not None and crop_ratio is not None:
        left, top, right, bottom = (v * scale for v in crop_box(width, height, img_size, crop_ratio))
    else:
        left, top, right, bottom = 0.0, 0.0, float(shown_w), float(shown_h)
    base = np.asarray(rgb, dtype=np.float64) / 255.0
    outside = np.ones((shown_h, shown_w), dtype=bool)
    outside[int(round(top)) : int(round(bottom)), int(round(left)) : int(round(right))] = False
    base[outside] *= 0.45  # what the network did not see

    dpi = 100.0
    fig_w = shown_w + _COLORBAR_PX
    lines, fontsize = _title_lines(title or "", fig_w)
    title_px = (_TITLE_PX + int(1.5 * fontsize * (len(lines) - 1))) if lines else 0
    fig_h = shown_h + title_px
    fig = Figure(figsize=(fig_w / dpi, fig_h / dpi), dpi=dpi)
    ax = fig.add_axes((0.0, 0.0, shown_w / fig_w, shown_h / fig_h))
    ax.imshow(base, extent=(0, shown_w, shown_h, 0), interpolation="nearest")
    heat = ax.imshow(
        grid,
        extent=(left, right, bottom, top),
        cmap=cmap,
        alpha=float(alpha),
        vmin=0.0,
        vmax=1.0,
        interpolation="bilinear",
    )
    if box is not None:
        x0, y0, x1, y1 = (float(v) for v in box)
        ax.add_patch(
            Rectangle(
                (x0 * shown_w, y0 * shown_h),
                (x1 - x0) * shown_w,
                (y1 - y0) * shown_h,
                fill=False,
                edgecolor="white",
                linewidth=1.5,
            )
        )
    ax.set_xlim(0, shown_w)
    ax.set_ylim(shown_h, 0)
    ax.set_axis_off()
    cax = fig.add_axes(((shown_w + 12) / fig_w, 0.08 * shown_h / fig_h, 14 / fig_w, 0.84 * shown_h / fig_h))
    bar = fig.colorbar(heat, cax=cax)
    if bar.solids is not None:
        bar.solids.set_alpha(1.0)
    bar.set_label("relevance (min-max)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    if lines:
        fig.text(
            0.5,
            1.0 - 0.5 * title_px / fig_h,
            "\n".join(lines),
            ha="center",
            va="center",
            fontsize=fontsize,
            clip_on=False,
        )
    final = os.fspath(path)
    with _atomic_path(final) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, metadata={"Title": title or ""})
    return final


__all__ = ["crop_box", "relevance_grid", "save_relevance_figure", "save_relevance_overlay"]


def view_transform(img_size: int, crop_ratio: float):
    """The evaluation transform without ToTensor/Normalize: the crop the network sees, as a PIL image."""
    from torchvision import transforms as T

    return T.Compose([T.Resize(int(math.floor(int(img_size) / float(crop_ratio)))), T.CenterCrop(int(img_size))])


def _relevance_hook_base():
    from semilearn.core.hooks import Hook

    return Hook


class RelevanceHook(_relevance_hook_base()):  # type: ignore[misc]  # semilearn imported lazily
    """With ``relevance_dir`` set, save relevance overlays of a fixed set of eval images during training.

    The first ``num_images`` images of the eval set (seen-class test images, always the same ones)
    are drawn after every evaluation (``<relevance_dir>/iter_<n>/``) and at the end
    (``<relevance_dir>/final/``), with the EMA weights the evaluation uses. File names carry the
    image index and its class; images with an object box (``fmnist_cluttered``) show it. Only rank 0 writes; nets without a ``relevance`` output are skipped
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
        pred = out["logits"].argmax(dim=1).cpu().tolist() if "logits" in out else [None] * len(idx)
        names = algorithm.openset_info.seen_class_names if algorithm.openset_info is not None else None
        boxes = getattr(algorithm.openset_info, "eval_boxes", None)  # datasets with object boxes
        folder = os.path.join(args.relevance_dir, tag)

        def name_of(label):
            return names[label] if names and label is not None else str(label)

        for j, i in enumerate(idx):
            label = int(ds.targets[i])
            cls = name_of(label).replace(" ", "_").replace("/", "-")
            save_relevance_figure(
                images[j],
                rel[j],
                os.path.join(folder, f"{i:03d}_{cls}.png"),
                title=f"predicted: {name_of(pred[j])} (true: {name_of(label)})",
                img_size=args.img_size,
                crop_ratio=args.crop_ratio,
                box=None if boxes is None else boxes[i],
            )
        algorithm.print_fn(f"relevance maps of {len(idx)} eval images saved to {folder}")

    def after_train_step(self, algorithm) -> None:
        if self.every_n_iters(algorithm, algorithm.num_eval_iter):
            self.save(algorithm, f"iter_{algorithm.it + 1}")

    def after_run(self, algorithm) -> None:
        self.save(algorithm, "final")
