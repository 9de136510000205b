"""The batched augmentations (augment_device) against USB's PIL implementation at the same parameters.

Tolerance, in [0, 255] units: the colour and lookup-table operations, translations, shears, crop
and flip agree exactly; Rotate differs on a few border pixels (Pillow's affine transform runs in
16.16 fixed point), the bilinear resized crop by at most 1 (Pillow's 22-bit fixed-point weights).
"""

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageDraw
from semilearn.datasets.augmentation import randaugment as usb

from usb_cfsg.datasets import batched_ops as ops
from usb_cfsg.datasets.batched_views import RANDAUGMENT_OPS

#: mean absolute difference to PIL allowed per operation, in [0, 255] units; exact unless listed
TOLERANCE = {"Rotate": 0.05}


def _images(count=4, h=48, w=56, seed=0):
    """Smooth colour gradients with noise: every value range and histogram shape an op can meet."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for k in range(count):
        base = np.stack([(xx * (3 + k)) % 256, (yy * 2 + 40 * k) % 256, ((xx + yy) * 1.5) % 200 + 30], -1)
        noise = rng.integers(-20, 20, size=(h, w, 3))
        lo, hi = 10 * k, 255 - 15 * k  # different per-channel ranges (autocontrast, equalize)
        out.append(np.clip(base * 0.7 + noise + 20, lo, hi).astype(np.uint8))
    return out


def _batch(images):
    return torch.stack([torch.from_numpy(a).permute(2, 0, 1).float() for a in images])


def _hwc(x, k):
    return x[k].permute(1, 2, 0).numpy()


USB_OPS = {fn.__name__: (fn, lo, hi) for fn, lo, hi in usb.augment_list()}


def test_the_operation_table_is_usbs():
    assert [(name, lo, hi) for name, _, lo, hi in RANDAUGMENT_OPS] == [
        (fn.__name__, float(lo), float(hi)) for fn, lo, hi in usb.augment_list()
    ]


@pytest.mark.parametrize("name", [op[0] for op in RANDAUGMENT_OPS])
def test_each_randaugment_operation_matches_usbs_pil_one(name):
    images = _images()
    x = _batch(images)
    _, op, lo, hi = next(o for o in RANDAUGMENT_OPS if o[0] == name)
    values = [lo, lo + 0.3 * (hi - lo), lo + 0.77 * (hi - lo), hi - 1e-6]
    out = op(x, torch.tensor(values, dtype=torch.float64))
    assert torch.equal(out, out.round()) and out.min() >= 0 and out.max() <= 255  # whole numbers, as PIL's uint8
    usb_fn = USB_OPS[name][0]
    diffs = [
        np.abs(_hwc(out, k) - np.asarray(usb_fn(Image.fromarray(a), values[k]), dtype=np.float32))
        for k, a in enumerate(images)
    ]
    mean = float(np.mean(diffs))
    assert mean <= TOLERANCE.get(name, 0.0), (name, mean, [float(d.max()) for d in diffs])


def _pil_cutout(a, v, cx, cy):
    """USB's Cutout at a given centre (USB draws it with np.random.uniform inside CutoutAbs)."""
    img = Image.fromarray(a)
    if v <= 0:
        return np.asarray(img)
    w, h = img.size
    side = v * w
    x0, y0 = int(max(0, cx - side / 2.0)), int(max(0, cy - side / 2.0))
    x1, y1 = min(w, x0 + side), min(h, y0 + side)
    img = img.copy()
    ImageDraw.Draw(img).rectangle((x0, y0, x1, y1), (125, 123, 114))
    return np.asarray(img)


def test_cutout_geometry_matches_usbs():
    images = _images(count=5)
    v = [0.0, 0.1, 0.37, 0.5, 0.23]
    cx, cy = [10.0, 1.2, 55.9, 33.3, 40.0], [5.0, 47.0, 2.0, 33.0, 1.0]
    out = ops.cutout(_batch(images), torch.tensor(v), torch.tensor(cx), torch.tensor(cy))
    for k, a in enumerate(images):
        assert np.array_equal(_hwc(out, k), _pil_cutout(a, v[k], cx[k], cy[k])), k
    grey = (_hwc(out, 2) == np.array(ops.CUTOUT_RGB)).all(axis=2)
    assert grey.sum() > 0 and not (_hwc(out, 0) == np.array(ops.CUTOUT_RGB)).all(axis=2).any()  # v = 0: none


def test_crop_and_flip_match_torchvision_exactly():
    images = _images()
    top, left = torch.tensor([0, 3, 7, 2]), torch.tensor([5, 0, 7, 1])
    flip = torch.tensor([True, False, True, False])
    out = ops.crop_flip(_batch(images), top, left, 40, flip)
    for k, a in enumerate(images):
        ref = TF.crop(Image.fromarray(a), int(top[k]), int(left[k]), 40, 40)
        ref = TF.hflip(ref) if flip[k] else ref
        assert np.array_equal(_hwc(out, k), np.asarray(ref)), k


@pytest.mark.parametrize("size", [32, 80])  # shrinking (antialiased, as Pillow) and enlarging
def test_resized_crop_matches_pil_bilinear_within_one(size):
    images = _images()
    top, left = torch.tensor([0, 3, 10, 0]), torch.tensor([5, 0, 7, 0])
    height, width = torch.tensor([20, 45, 38, 48]), torch.tensor([30, 50, 40, 56])
    flip = torch.tensor([True, False, True, False])
    out = ops.resized_crop_flip(_batch(images), top, left, height, width, size, flip)
    for k, a in enumerate(images):
        ref = TF.resized_crop(
            Image.fromarray(a),
            int(top[k]),
            int(left[k]),
            int(height[k]),
            int(width[k]),
            [size, size],
            TF.InterpolationMode.BILINEAR,
        )
        ref = np.asarray(TF.hflip(ref) if flip[k] else ref, dtype=np.float32)
        diff = np.abs(_hwc(out, k) - ref)
        assert diff.max() <= 1 and diff.mean() <= 0.5, (k, diff.max(), diff.mean())


def test_affine_operations_keep_pils_pixel_convention():
    x = _batch(_images(count=1))
    assert torch.equal(ops.rotate(x, torch.tensor([0.0])), x)  # the identity map hits every pixel centre
    shifted = ops.affine_op("translate_x")(x, torch.tensor([3.0 / x.shape[3]]))
    assert torch.equal(shifted[..., :-3], x[..., 3:]) and (shifted[..., -3:] == 0).all()  # black outside


def test_grayscale_is_pils_luma():
    a = _images(count=1)[0]
    assert np.array_equal(ops.grayscale(_batch([a]))[0, 0].numpy(), np.asarray(Image.fromarray(a).convert("L")))


def test_normalize_is_to_tensor_then_normalize():
    a = _images(count=1)[0]
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3])
    ref = TF.normalize(TF.to_tensor(Image.fromarray(a)), mean.tolist(), std.tolist())
    assert torch.allclose(ops.normalize(_batch([a]), mean, std)[0], ref, atol=1e-6)


def test_unknown_affine_kind_is_named():
    with pytest.raises(ValueError, match="unknown affine operation 'shear_z'"):
        ops.shear_translate_coeffs("shear_z", torch.zeros(1), 8, 8)


def test_rotate_coefficients_are_pils():
    # Pillow's Image.rotate builds this matrix about (w/2, h/2); compare at 30 degrees
    w, h, deg = 56, 48, 30.0
    a = -math.radians(deg)
    m = [math.cos(a), math.sin(a), 0.0, -math.sin(a), math.cos(a), 0.0]
    m[2] = m[0] * -w / 2 + m[1] * -h / 2 + w / 2
    m[5] = m[3] * -w / 2 + m[4] * -h / 2 + h / 2
    assert torch.allclose(ops.rotate_coeffs(torch.tensor([deg]), w, h)[0], torch.tensor(m, dtype=torch.float64))
