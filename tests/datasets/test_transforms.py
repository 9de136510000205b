"""build_transforms: USB's weak/strong/eval recipe with the backbone's normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from usb_cfsg.datasets import build_transforms
from usb_cfsg.errors import ConfigError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def test_shapes_and_types() -> None:
    weak, strong, evaluate = build_transforms(32, 0.875, CLIP_MEAN, CLIP_STD)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8))
    for t in (weak, strong, evaluate):
        out = t(img)
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == (3, 32, 32)


def test_eval_is_deterministic_and_normalised() -> None:
    _, _, evaluate = build_transforms(16, 0.875, CLIP_MEAN, CLIP_STD)
    img = Image.new("RGB", (40, 30), (200, 100, 50))
    out = evaluate(img)
    expected = (torch.tensor([200, 100, 50]) / 255.0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.allclose(out[:, 8, 8], expected.float(), atol=1e-5)
    assert torch.equal(out, evaluate(img))


def test_resize_follows_crop_ratio() -> None:
    weak, _, evaluate = build_transforms(224, 0.875, CLIP_MEAN, CLIP_STD)
    resize = weak.transforms[0]
    assert list(resize.size) == [256, 256]
    assert evaluate.transforms[0].size == 256
    names = [type(t).__name__ for t in build_transforms(224, 0.875, CLIP_MEAN, CLIP_STD)[1].transforms]
    assert names == [
        "Resize",
        "RandomResizedCropAndInterpolation",
        "RandomHorizontalFlip",
        "RandAugment",
        "ToTensor",
        "Normalize",
    ]


@pytest.mark.parametrize(
    "args, message",
    [
        ((0, 0.875, CLIP_MEAN, CLIP_STD), "img_size must be a positive integer"),
        ((16, 0.0, CLIP_MEAN, CLIP_STD), r"crop_ratio must be in \(0, 1\]"),
        ((16, 1.5, CLIP_MEAN, CLIP_STD), r"crop_ratio must be in \(0, 1\]"),
        ((16, 0.875, CLIP_MEAN[:2], CLIP_STD), "mean and std need 3 values"),
        ((16, 0.875, CLIP_MEAN, (0.2, 0.0, 0.2)), "std > 0"),
    ],
)
def test_bad_settings(args: tuple, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_transforms(*args)
