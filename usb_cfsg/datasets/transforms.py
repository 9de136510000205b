"""Weak, strong and eval augmentations, following USB's recipe for 224-px file datasets (aves.py)."""

from __future__ import annotations

import math
from typing import Callable, Sequence

from ..errors import ConfigError

Transform = Callable[..., object]


def build_transforms(
    img_size: int,
    crop_ratio: float,
    mean: Sequence[float],
    std: Sequence[float],
) -> tuple[Transform, Transform, Transform]:
    """Build USB's weak, strong and eval transforms for RGB ``PIL.Image`` inputs.

    * weak: Resize to a ``floor(img_size / crop_ratio)`` square, RandomCrop(img_size), HFlip.
    * strong: the same Resize, semilearn's RandomResizedCropAndInterpolation(img_size), HFlip,
      RandAugment(3, 10).
    * eval: Resize the short side to ``floor(img_size / crop_ratio)``, CenterCrop(img_size).

    Each ends with ToTensor and Normalize(mean, std) (use the backbone's statistics, e.g. CLIP's).
    Images must already be RGB (:func:`usb_cfsg.datasets.images.load_rgb`).

    Args:
        img_size: Output side length in pixels.
        crop_ratio: ``img_size`` over the resized side, in (0, 1].
        mean: Per-channel normalisation mean (3 values).
        std: Per-channel normalisation standard deviation (3 positive values).

    Returns:
        ``(weak, strong, eval)`` transforms, each mapping a PIL image to a 3 x img_size x img_size
        float tensor.

    Raises:
        ConfigError: On a non-positive size, a crop ratio outside (0, 1], or bad mean/std.
    """
    from semilearn.datasets.augmentation import RandAugment, RandomResizedCropAndInterpolation
    from torchvision import transforms as T

    if int(img_size) != img_size or img_size < 1:
        raise ConfigError(f"img_size must be a positive integer, got {img_size!r}")
    if not 0.0 < float(crop_ratio) <= 1.0:
        raise ConfigError(f"crop_ratio must be in (0, 1], got {crop_ratio!r} (USB uses 0.875)")
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise ConfigError(f"mean and std need 3 values each and std > 0, got mean={mean!r} std={std!r}")
    img_size = int(img_size)
    resized = int(math.floor(img_size / float(crop_ratio)))
    finish = [T.ToTensor(), T.Normalize(list(mean), list(std))]
    weak = T.Compose(
        [
            T.Resize((resized, resized)),
            T.RandomCrop((img_size, img_size)),
            T.RandomHorizontalFlip(),
            *finish,
        ]
    )
    strong = T.Compose(
        [
            T.Resize((resized, resized)),
            RandomResizedCropAndInterpolation((img_size, img_size)),
            T.RandomHorizontalFlip(),
            RandAugment(3, 10),
            *finish,
        ]
    )
    evaluate = T.Compose([T.Resize(resized), T.CenterCrop(img_size), *finish])
    return weak, strong, evaluate
