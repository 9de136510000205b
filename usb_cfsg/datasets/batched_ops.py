"""USB's image augmentations as batched tensor operations with explicit per-image parameters.

Each function takes a batch of images ``x`` [B, 3, H, W] holding whole numbers in [0, 255] (a
float tensor, on any device) and per-image parameters (tensors [B] or [B, k]), and returns the
batch after the operation, again whole numbers in [0, 255]: the result is rounded the way
Pillow rounds its 8-bit result, so a chain of operations quantises as USB's PIL chain does.
They reproduce, image by image, what USB 0.3.2's PIL-based augmentations compute at the same
parameters (``semilearn.datasets.augmentation.randaugment``; torchvision's crop, flip and
PIL's bilinear resize), which ``tests/datasets/test_batched_ops.py`` checks operation by operation.
Drawing the parameters is :mod:`usb_cfsg.datasets.batched_views`'s job.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Cutout's fill colour in USB (``CutoutAbs``)
CUTOUT_RGB = (125.0, 123.0, 114.0)


def _per_image(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ``Image.blend(degenerate, x, factor)`` as ImageEnhance uses it (truncated to integers)."""
    f = _per_image(factor, x)
    return (degenerate + f * (x - degenerate)).clamp(0, 255).floor()


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """PIL's RGB -> L conversion (ITU-R 601-2 luma in 16-bit fixed point, rounded) [B, 1, H, W]."""
    xi = x.to(torch.int64)
    luma = (xi[:, 0:1] * 19595 + xi[:, 1:2] * 38470 + xi[:, 2:3] * 7471 + 0x8000) >> 16
    return luma.to(x.dtype)


def brightness(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Brightness(img).enhance(v)``: blend with black."""
    return _blend(torch.zeros_like(x), x, v)


def color(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Color(img).enhance(v)``: blend with the image's grayscale version."""
    return _blend(grayscale(x).expand_as(x), x, v)


def contrast(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Contrast(img).enhance(v)``: blend with the grayscale mean, rounded to an integer."""
    mean = torch.floor(grayscale(x).mean(dim=(1, 2, 3), dtype=torch.float64) + 0.5).to(x.dtype)
    return _blend(mean.view(-1, 1, 1, 1).expand_as(x), x, v)


def sharpness(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``ImageEnhance.Sharpness(img).enhance(v)``: blend with PIL's SMOOTH filter (border pixels kept)."""
    kernel = torch.ones(3, 1, 3, 3, dtype=x.dtype, device=x.device)
    kernel[:, :, 1, 1] = 5.0
    smooth = torch.floor(F.conv2d(x, kernel / 13.0, groups=3) + 0.5).clamp(0, 255)
    degenerate = x.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth
    return _blend(degenerate, x, v)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """``ImageOps.autocontrast(img)``: stretch each channel's [min, max] to [0, 255] (truncated)."""
    lo = x.amin(dim=(2, 3), keepdim=True).double()
    hi = x.amax(dim=(2, 3), keepdim=True).double()
    span = hi - lo
    scale = torch.full_like(span, 255.0) / span.clamp(min=1.0)  # tensor / tensor: IEEE division, as Python's
    offset = -lo * scale
    out = torch.trunc(x.double() * scale + offset).clamp(0, 255)  # as Pillow writes it (rounding included)
    return torch.where(span > 0, out, x.double()).to(x.dtype)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """``ImageOps.equalize(img)``: per-channel histogram equalisation with PIL's look-up table."""
    b, c, h, w = x.shape
    idx = x.to(torch.int64).view(b * c, h * w)
    hist = torch.zeros(b * c, 256, dtype=torch.int64, device=x.device)
    hist.scatter_add_(1, idx, torch.ones_like(idx))
    last = hist.gather(1, idx.amax(dim=1, keepdim=True))  # the count of the highest value present
    step = (h * w - last) // 255
    safe = step.clamp(min=1)
    lut = (step // 2 + torch.cumsum(hist, dim=1) - hist) // safe
    lut = torch.where(step > 0, lut.clamp(max=255), torch.arange(256, device=x.device).expand_as(lut))
    return lut.gather(1, idx).view(b, c, h, w).to(x.dtype)


def posterize(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """USB's ``Posterize(img, v)``: keep the top ``max(1, int(v))`` bits of each value."""
    bits = v.to(torch.int64).clamp(min=1, max=8).to(x.device)
    mask = (~((1 << (8 - bits)) - 1)).view(-1, 1, 1, 1)
    return (x.to(torch.int64) & mask).to(x.dtype)


def solarize(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``ImageOps.solarize(img, v)``: invert every value at or above the threshold ``v``."""
    return torch.where(x < _per_image(v, x), x, 255.0 - x)


def affine_nearest(x: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """PIL's ``img.transform(size, Image.AFFINE, coeffs)`` (nearest neighbour, black outside).

    Output pixel (col, row) takes the input pixel at ``floor(a (col+.5) + b (row+.5) + c)``,
    ``floor(d (col+.5) + e (row+.5) + f)``, or black when that falls outside the image.

    Args:
        x: Images [B, 3, H, W].
        coeffs: ``(a, b, c, d, e, f)`` per image [B, 6] (output -> input map, in pixels).
    """
    b, ch, h, w = x.shape
    cf = coeffs.to(device=x.device, dtype=torch.float64)
    cols = torch.arange(w, device=x.device, dtype=torch.float64) + 0.5
    rows = torch.arange(h, device=x.device, dtype=torch.float64) + 0.5
    a, bb, c, d, e, f = (cf[:, k].view(-1, 1, 1) for k in range(6))
    xin = torch.floor(a * cols.view(1, 1, -1) + bb * rows.view(1, -1, 1) + c)
    yin = torch.floor(d * cols.view(1, 1, -1) + e * rows.view(1, -1, 1) + f)
    inside = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
    flat = (yin.clamp(0, h - 1) * w + xin.clamp(0, w - 1)).to(torch.int64).view(b, 1, h * w)
    out = x.reshape(b, ch, h * w).gather(2, flat.expand(b, ch, h * w)).view(b, ch, h, w)
    return out * inside.view(b, 1, h, w).to(x.dtype)


def rotate_coeffs(degrees: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """The affine coefficients of PIL's ``img.rotate(degrees)`` (counter-clockwise, about the centre)."""
    rad = -torch.deg2rad(degrees.to(torch.float64))
    cos, sin = torch.cos(rad), torch.sin(rad)
    cx, cy = width / 2.0, height / 2.0
    c = cos * -cx + sin * -cy + cx
    f = -sin * -cx + cos * -cy + cy
    return torch.stack([cos, sin, c, -sin, cos, f], dim=1)


def shear_translate_coeffs(kind: str, v: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Affine coefficients of USB's ShearX/ShearY (``v`` = shear) and TranslateX/TranslateY (``v`` = fraction)."""
    v = v.to(torch.float64)
    one, zero = torch.ones_like(v), torch.zeros_like(v)
    rows = {
        "shear_x": (one, v, zero, zero, one, zero),
        "shear_y": (one, zero, zero, v, one, zero),
        "translate_x": (one, zero, v * width, zero, one, zero),
        "translate_y": (one, zero, zero, zero, one, v * height),
    }
    if kind not in rows:
        raise ValueError(f"unknown affine operation {kind!r}; expected one of {sorted(rows)}")
    return torch.stack(rows[kind], dim=1)


def cutout(x: torch.Tensor, v: torch.Tensor, x0: torch.Tensor, y0: torch.Tensor) -> torch.Tensor:
    """USB's ``Cutout(img, v)`` at explicit corners: a grey square of side ``v * W``.

    USB draws the square's centre with ``np.random.uniform(W)`` (which is uniform on (1, W]) and
    fills the rectangle ``(int(max(0, cx - s/2)), ..., min(W, x0 + s), ...)`` with PIL, whose
    rectangles include both corners (coordinates truncated to integers).

    Args:
        x: Images [B, 3, H, W].
        v: Side as a fraction of the width [B]; images with ``v <= 0`` are unchanged.
        x0, y0: The square's centre as USB draws it [B] (pixels).
    """
    b, _, h, w = x.shape
    side = v.to(torch.float64) * w
    left = torch.clamp(x0.to(torch.float64) - side / 2, min=0).floor()
    top = torch.clamp(y0.to(torch.float64) - side / 2, min=0).floor()
    right = torch.minimum(left + side, torch.full_like(side, float(w))).floor()
    bottom = torch.minimum(top + side, torch.full_like(side, float(h))).floor()
    cols = torch.arange(w, dtype=torch.float64).view(1, 1, -1)
    rows = torch.arange(h, dtype=torch.float64).view(1, -1, 1)
    box = (cols >= left.view(-1, 1, 1)) & (cols <= right.view(-1, 1, 1))
    box = box & (rows >= top.view(-1, 1, 1)) & (rows <= bottom.view(-1, 1, 1)) & (v > 0).view(-1, 1, 1)
    fill = torch.tensor(CUTOUT_RGB, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return torch.where(box.to(x.device).unsqueeze(1), fill, x)


def crop_flip(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int, flip: torch.Tensor) -> torch.Tensor:
    """torchvision's ``RandomCrop(size)`` then ``RandomHorizontalFlip`` at explicit parameters.

    Args:
        x: Images [B, 3, H, W].
        top, left: The crop's corner per image [B] (integers).
        size: Side of the square crop.
        flip: Whether to mirror each image [B] (bool).
    """
    b, ch, h, w = x.shape
    ar = torch.arange(size, device=x.device)
    rows = top.to(x.device).view(-1, 1) + ar
    cols = left.to(x.device).view(-1, 1) + torch.where(flip.to(x.device).view(-1, 1), ar.flip(0), ar)
    flat = (rows.view(b, size, 1) * w + cols.view(b, 1, size)).view(b, 1, size * size)
    return x.reshape(b, ch, h * w).gather(2, flat.expand(b, ch, size * size)).view(b, ch, size, size)


def _bilinear_weights(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int) -> torch.Tensor:
    """PIL's bilinear resampling weights for windows ``[start, start + length)`` -> ``out_size`` [B, out, in].

    Pillow's ``precompute_coeffs``: the triangle filter widened by the scale when shrinking
    (antialiasing), taps limited to the window, weights normalised to sum 1.
    """
    length = length.to(torch.float64)
    scale = (length / out_size).view(-1, 1, 1)
    filterscale = scale.clamp(min=1.0)
    support = filterscale  # the triangle filter's support is 1
    center = (torch.arange(out_size, dtype=torch.float64).view(1, -1, 1) + 0.5) * scale
    xmin = torch.trunc(center - support + 0.5).clamp(min=0)
    xmax = torch.minimum(torch.trunc(center + support + 0.5), length.view(-1, 1, 1))
    tap = torch.arange(in_size, dtype=torch.float64).view(1, 1, -1) - start.to(torch.float64).view(-1, 1, 1)
    weight = (1.0 - ((tap - center + 0.5) / filterscale).abs()).clamp(min=0)
    weight = weight * ((tap >= xmin) & (tap < xmax))
    return weight / weight.sum(dim=2, keepdim=True).clamp(min=1e-12)


def resized_crop_flip(
    x: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    height: torch.Tensor,
    width: torch.Tensor,
    size: int,
    flip: torch.Tensor,
) -> torch.Tensor:
    """torchvision's ``resized_crop(img, top, left, height, width, size, BILINEAR)`` on PIL, then the flip.

    The crop is resized as Pillow does (separable, horizontal pass first, each pass rounded to
    integers) by two batched matrix products, so every image may have its own window.

    Args:
        x: Images [B, 3, H, W].
        top, left, height, width: The crop window per image [B] (integers).
        size: Side of the square output.
        flip: Whether to mirror each image [B] (bool).
    """
    _, _, h, w = x.shape
    wx = _bilinear_weights(left, width, w, size)  # [B, size, W]
    wx = torch.where(flip.view(-1, 1, 1), wx.flip(1), wx)
    wy = _bilinear_weights(top, height, h, size)  # [B, size, H]
    wx, wy = wx.to(device=x.device, dtype=x.dtype), wy.to(device=x.device, dtype=x.dtype)
    across = torch.floor(torch.matmul(x, wx.transpose(1, 2).unsqueeze(1)) + 0.5).clamp(0, 255)
    return torch.floor(torch.matmul(wy.unsqueeze(1), across) + 0.5).clamp(0, 255)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``ToTensor`` then ``Normalize(mean, std)``: [0, 255] -> (x / 255 - mean) / std."""
    return (x / 255.0 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """USB's ``Rotate(img, v)`` = PIL's ``img.rotate(v)``."""
    return affine_nearest(x, rotate_coeffs(degrees, x.shape[3], x.shape[2]))


def affine_op(kind: str):
    """USB's ShearX / ShearY / TranslateX / TranslateY as ``op(x, v)``."""

    def op(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return affine_nearest(x, shear_translate_coeffs(kind, v, x.shape[3], x.shape[2]))

    op.__name__ = kind
    return op


__all__ = [
    "CUTOUT_RGB",
    "affine_nearest",
    "affine_op",
    "autocontrast",
    "brightness",
    "color",
    "contrast",
    "crop_flip",
    "cutout",
    "equalize",
    "grayscale",
    "normalize",
    "posterize",
    "resized_crop_flip",
    "rotate",
    "rotate_coeffs",
    "sharpness",
    "shear_translate_coeffs",
    "solarize",
]
