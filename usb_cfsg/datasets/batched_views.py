"""Weak and strong views made as batched tensor operations on the training device (``augment_device``).

With ``augment_device: cpu`` or ``cuda``, the training sets return each image once, decoded and
resized to USB's square ``floor(img_size / crop_ratio)``, as a uint8 tensor [R, R, 3] (``x_lb_raw``,
``x_ulb_raw``): a DataLoader worker only reads (with ``cache_images``, from shared memory) and
collates. :class:`BatchedViews` then makes, per image and with its own random parameters, the
views USB's PIL transforms make (:func:`usb_cfsg.datasets.transforms.build_transforms`):

* weak: ``RandomCrop(img_size)`` + ``RandomHorizontalFlip``;
* strong: ``RandomResizedCropAndInterpolation(img_size)`` (scale 0.08-1, ratio 3/4-4/3, bilinear)
  + ``RandomHorizontalFlip`` + ``RandAugment(3, 10)``: 3 operations drawn uniformly, with
  replacement, from USB's 14, each at a magnitude uniform in USB's range, then Cutout of a
  square of side uniform in [0, 0.5] x img_size;

each followed by ``ToTensor`` + ``Normalize``. The operations are :mod:`.batched_ops`. The
parameters are drawn on the CPU from a generator seeded per step and view (the training loop
derives the step's seed from the run seed, iteration and rank), so a resumed run makes the same
views as an uninterrupted one and the CPU and CUDA paths draw the same parameters.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Sequence, Tuple

import numpy as np
import torch

from ..errors import ConfigError
from . import batched_ops as ops

#: USB's ``augment_list()``: (name, operation(x, v), low, high); the order is USB's
RANDAUGMENT_OPS: Tuple[Tuple[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor], float, float], ...] = (
    ("AutoContrast", lambda x, v: ops.autocontrast(x), 0.0, 1.0),
    ("Brightness", ops.brightness, 0.05, 0.95),
    ("Color", ops.color, 0.05, 0.95),
    ("Contrast", ops.contrast, 0.05, 0.95),
    ("Equalize", lambda x, v: ops.equalize(x), 0.0, 1.0),
    ("Identity", lambda x, v: x, 0.0, 1.0),
    ("Posterize", ops.posterize, 4.0, 8.0),
    ("Rotate", ops.rotate, -30.0, 30.0),
    ("Sharpness", ops.sharpness, 0.05, 0.95),
    ("ShearX", ops.affine_op("shear_x"), -0.3, 0.3),
    ("ShearY", ops.affine_op("shear_y"), -0.3, 0.3),
    ("Solarize", ops.solarize, 0.0, 256.0),
    ("TranslateX", ops.affine_op("translate_x"), -0.3, 0.3),
    ("TranslateY", ops.affine_op("translate_y"), -0.3, 0.3),
)
#: RandAugment(n, m) as USB's strong transform builds it (m is unused by USB's implementation)
RANDAUGMENT_N = 3
#: USB's RandomResizedCropAndInterpolation defaults
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
RRC_ATTEMPTS = 10
#: (raw batch, view key, kind) of every view :meth:`BatchedViews.expand` can make; the position seeds its draws
VIEW_PLAN = (
    ("x_lb_raw", "x_lb", "weak"),
    ("x_lb_raw", "x_lb_w2", "weak"),
    ("x_ulb_raw", "x_ulb_w", "weak"),
    ("x_ulb_raw", "x_ulb_w2", "weak"),
    ("x_ulb_raw", "x_ulb_s", "strong"),
)


def resized_side(img_size: int, crop_ratio: float) -> int:
    """USB's resized side ``floor(img_size / crop_ratio)`` (what the raw images are stored at)."""
    return int(math.floor(int(img_size) / float(crop_ratio)))


def draw_crop(
    gen: torch.Generator, count: int, height: int, width: int, size: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``RandomCrop(size)`` corners on ``height`` x ``width`` images and the ``RandomHorizontalFlip`` coins."""
    top = torch.randint(0, height - size + 1, (count,), generator=gen)
    left = torch.randint(0, width - size + 1, (count,), generator=gen)
    flip = torch.rand(count, generator=gen, dtype=torch.float64) < 0.5
    return top, left, flip


def draw_resized_crop(gen: torch.Generator, count: int, height: int, width: int) -> Dict[str, torch.Tensor]:
    """Windows of USB's ``RandomResizedCropAndInterpolation.get_params`` (10 tries, then the fallback)."""
    area = float(height * width)
    target = area * (
        RRC_SCALE[0]
        + (RRC_SCALE[1] - RRC_SCALE[0]) * torch.rand(count, RRC_ATTEMPTS, generator=gen, dtype=torch.float64)
    )
    lo, hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    aspect = torch.exp(lo + (hi - lo) * torch.rand(count, RRC_ATTEMPTS, generator=gen, dtype=torch.float64))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    ok = (w <= width) & (h <= height)
    first = torch.where(ok.any(1), ok.to(torch.int64).argmax(1), torch.full((count,), -1))
    pick = first.clamp(min=0).view(-1, 1)
    in_ratio = width / height
    if in_ratio < RRC_RATIO[0]:
        fb_w, fb_h = width, int(round(width / RRC_RATIO[0]))
    elif in_ratio > RRC_RATIO[1]:
        fb_w, fb_h = int(round(height * RRC_RATIO[1])), height
    else:
        fb_w, fb_h = width, height
    found = first >= 0
    w = torch.where(found, w.gather(1, pick).view(-1), torch.full((count,), float(fb_w), dtype=torch.float64))
    h = torch.where(found, h.gather(1, pick).view(-1), torch.full((count,), float(fb_h), dtype=torch.float64))
    u_top, u_left = torch.rand(2, count, generator=gen, dtype=torch.float64)
    top = torch.where(found, torch.floor(u_top * (height - h + 1)), torch.floor((height - h) / 2))
    left = torch.where(found, torch.floor(u_left * (width - w + 1)), torch.floor((width - w) / 2))
    return {"top": top.long(), "left": left.long(), "height": h.long(), "width": w.long()}


def draw_randaugment(gen: torch.Generator, count: int, size: int) -> Dict[str, torch.Tensor]:
    """USB's RandAugment(3, ·) draws: operation indices [B, 3], magnitudes [B, 3], Cutout side and centre."""
    choice = torch.randint(0, len(RANDAUGMENT_OPS), (count, RANDAUGMENT_N), generator=gen)
    low = torch.tensor([op[2] for op in RANDAUGMENT_OPS], dtype=torch.float64)[choice]
    high = torch.tensor([op[3] for op in RANDAUGMENT_OPS], dtype=torch.float64)[choice]
    magnitude = low + (high - low) * torch.rand(count, RANDAUGMENT_N, generator=gen, dtype=torch.float64)
    cut = 0.5 * torch.rand(count, generator=gen, dtype=torch.float64)
    # USB: np.random.uniform(w) = uniform(low=w, high=1.0), i.e. on (1, w]
    cx, cy = size + (1.0 - size) * torch.rand(2, count, generator=gen, dtype=torch.float64)
    return {"choice": choice, "magnitude": magnitude, "cutout": cut, "cutout_x": cx, "cutout_y": cy}


def apply_randaugment(x: torch.Tensor, params: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Apply drawn RandAugment parameters (:func:`draw_randaugment`) to whole-number images [B, 3, S, S]."""
    x = x.clone()
    choice, magnitude = params["choice"], params["magnitude"]
    for step in range(choice.shape[1]):
        for k, (_, op, _, _) in enumerate(RANDAUGMENT_OPS):
            rows = (choice[:, step] == k).nonzero(as_tuple=True)[0]
            if rows.numel() == 0:
                continue
            dev_rows = rows.to(x.device)
            x[dev_rows] = op(x[dev_rows], magnitude[rows, step])
    return ops.cutout(x, params["cutout"], params["cutout_x"], params["cutout_y"])


class BatchedViews:
    """USB's weak and strong training views of raw uint8 batches, on the batch's device.

    Args:
        img_size: Output side (USB's ``img_size``).
        mean, std: Normalisation statistics (3 values each).
    """

    def __init__(self, img_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.img_size = int(img_size)
        self.mean = torch.tensor(list(mean), dtype=torch.float32)
        self.std = torch.tensor(list(std), dtype=torch.float32)

    @staticmethod
    def generator(step_seed: int, view: int = 0) -> torch.Generator:
        """The CPU generator of one view of one step's batch (``step_seed``: the step's own seed)."""
        return torch.Generator().manual_seed((int(step_seed) * len(VIEW_PLAN) + view) % (2**63 - 1))

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        return ops.normalize(x, self.mean.to(x.device), self.std.to(x.device))

    def _check(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw uint8 images [B, H, W, 3] (as collated) -> float [B, 3, H, W]."""
        if raw.dtype != torch.uint8 or raw.dim() != 4 or raw.shape[3] != 3:
            raise ValueError(f"raw images must be uint8 [B, H, W, 3], got {raw.dtype} {tuple(raw.shape)}")
        if min(raw.shape[1:3]) < self.img_size:
            raise ValueError(f"raw images {tuple(raw.shape[1:3])} are smaller than img_size {self.img_size}")
        return raw.permute(0, 3, 1, 2).float()

    def weak(self, raw: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """RandomCrop + RandomHorizontalFlip + normalisation of a raw uint8 batch [B, R, R, 3] -> [B, 3, S, S]."""
        x = self._check(raw)
        top, left, flip = draw_crop(gen, x.shape[0], x.shape[2], x.shape[3], self.img_size)
        return self._finish(ops.crop_flip(x, top, left, self.img_size, flip))

    def strong(self, raw: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """RandomResizedCrop + RandomHorizontalFlip + RandAugment(3) + Cutout + normalisation, [B, R, R, 3] -> [B, 3, S, S]."""
        x = self._check(raw)
        b, _, h, w = x.shape
        win = draw_resized_crop(gen, b, h, w)
        flip = torch.rand(b, generator=gen, dtype=torch.float64) < 0.5
        x = ops.resized_crop_flip(x, win["top"], win["left"], win["height"], win["width"], self.img_size, flip)
        return self._finish(apply_randaugment(x, draw_randaugment(gen, b, self.img_size)))

    def expand(self, batch: Dict[str, Any], wanted: Sequence[str], step_seed: int) -> Dict[str, Any]:
        """Replace ``x_lb_raw`` / ``x_ulb_raw`` by the views that ``wanted`` (train_step's arguments) names.

        ``x_lb`` (weak), ``x_lb_w2`` (a second weak view), ``x_ulb_w`` (weak), ``x_ulb_w2`` and
        ``x_ulb_s`` (strong); each view draws its own parameters, from ``step_seed`` (the caller derives it
        from the run seed, iteration and rank, so that a resumed run makes the same views).
        """
        out = {k: v for k, v in batch.items() if k not in ("x_lb_raw", "x_ulb_raw")}
        for view, (source, key, kind) in enumerate(VIEW_PLAN):
            if source in batch and key in wanted:
                make = self.weak if kind == "weak" else self.strong
                out[key] = make(batch[source], self.generator(step_seed, view))
        return out


class RawImage:
    """A transform giving the uint8 tensor [H, W, 3] of a PIL image (or an HWC uint8 array).

    Channels last, as decoded: collating such items is a plain copy; the views transpose on the device.
    """

    def __call__(self, img: Any) -> torch.Tensor:
        arr = np.array(img, dtype=np.uint8)  # a writable copy (PIL's array interface is read-only)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        return torch.from_numpy(np.ascontiguousarray(arr))

    def __repr__(self) -> str:
        return "RawImage()"


def use_raw_views(datasets: Dict[str, Any], img_size: int, crop_ratio: float) -> None:
    """Switch the training sets to raw uint8 items (in place), before ``cache_images`` is attached.

    The algorithm must take USB's default views (``usb_cfsg.config.augment_device_problems``
    checks it with the configuration).

    Their transform becomes ``Resize((R, R))`` + :class:`RawImage` (R = :func:`resized_side`), the
    deterministic head that the image cache stores once; the strong transform is dropped (the
    strong view is made on the device).
    """
    from torchvision import transforms as T

    side = resized_side(img_size, crop_ratio)
    for name in ("train_lb", "train_ulb"):
        ds = datasets.get(name)
        if ds is None:
            continue
        if not hasattr(ds, "raw_views"):
            raise ConfigError(f"augment_device needs our OpenSetDataset for {name}, got {type(ds).__name__}")
        ds.transform = T.Compose([T.Resize((side, side)), RawImage()])
        ds.strong_transform = None
        ds.raw_views = True


def raw_item(ds: Any, idx: int) -> Dict[str, Any]:
    """The item of a raw-views dataset: ``{idx_lb, x_lb_raw, y_lb}`` or ``{idx_ulb, x_ulb_raw, y_ulb}``.

    With ``cache_images`` (the dataset's transform is then :class:`RawImage` alone) the image is a
    view of the shared cache, which the DataLoader's collation copies once into the batch.
    """
    steps = getattr(ds.transform, "transforms", None)
    array = getattr(ds.__sample__, "array", None)
    if array is not None and steps is not None and len(steps) == 1 and isinstance(steps[0], RawImage):
        raw, target = array(idx), int(ds.targets[idx])
    else:
        img, target = ds.__sample__(idx)
        if isinstance(img, np.ndarray):
            from PIL import Image

            img = Image.fromarray(img)
        raw = ds.transform(img)
    if ds.is_ulb:
        return {"idx_ulb": idx, "x_ulb_raw": raw, "y_ulb": target}
    return {"idx_lb": idx, "x_lb_raw": raw, "y_lb": target}


__all__ = [
    "RANDAUGMENT_OPS",
    "BatchedViews",
    "RawImage",
    "apply_randaugment",
    "draw_crop",
    "draw_randaugment",
    "draw_resized_crop",
    "raw_item",
    "resized_side",
    "use_raw_views",
]
