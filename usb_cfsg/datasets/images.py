"""Decode any image a dataset may contain into an 8-bit RGB ``PIL.Image``.

Fine-grained datasets are not as clean as CIFAR: CUB-200-2011 has grayscale JPEGs, Stanford Cars
has CMYK JPEGs, user folders bring RGBA and palette PNGs with transparency and 16-bit PNGs.
USB's transforms (and RandAugment in particular) expect 8-bit RGB, so every image goes through
:func:`load_rgb` first. Transparent pixels are composited on white, which is what a viewer shows.
"""

from __future__ import annotations

import os
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DatasetError

#: Background colour for transparent pixels.
_WHITE = (255, 255, 255)

#: Modes PIL converts to RGB directly without losing anything we care about.
_DIRECT_MODES = {"RGB", "L", "1", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"}

#: Modes holding more than 8 bits per sample.
_WIDE_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}


def _wide_to_uint8(img: Image.Image) -> np.ndarray:
    """Scale a 16-bit, 32-bit integer or float single-channel image to uint8."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        return (arr.astype(np.float64) / 257.0).round().astype(np.uint8)
    return _array_to_uint8(arr)


def _array_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map an array of any numeric dtype onto 0..255.

    uint8 passes through; bool maps to 0/255; other integers whose values fit in 8 bits are kept,
    those up to 65535 are treated as 16-bit; floats in [0, 1] are scaled by 255; anything else is
    min-max scaled.
    """
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    data = arr.astype(np.float64)
    lo = float(data.min()) if data.size else 0.0
    hi = float(data.max()) if data.size else 0.0
    if np.issubdtype(arr.dtype, np.integer):
        if lo >= 0 and hi <= 255:
            return data.astype(np.uint8)
        if lo >= 0 and hi <= 65535:
            return (data / 257.0).round().astype(np.uint8)
    elif lo >= 0.0 and hi <= 1.0:
        return (data * 255.0).round().astype(np.uint8)
    span = hi - lo if hi > lo else 1.0
    return ((data - lo) / span * 255.0).round().astype(np.uint8)


def _composite_on_white(img: Image.Image) -> Image.Image:
    """Composite an image with an alpha channel on a white background."""
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a decoded ``PIL.Image`` of any mode to 8-bit RGB.

    Args:
        img: The image (already loaded).

    Returns:
        A new RGB image.
    """
    mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _composite_on_white(img)
    if mode == "P":
        if "transparency" in img.info:
            return _composite_on_white(img)
        return img.convert("RGB")
    if mode in _WIDE_MODES:
        return Image.fromarray(_wide_to_uint8(img), mode="L").convert("RGB")
    if mode in _DIRECT_MODES:
        return img.convert("RGB")
    # Anything exotic (e.g. "I;16" variants with alpha): go through numpy.
    return array_to_rgb(np.asarray(img))


def array_to_rgb(arr: np.ndarray) -> Image.Image:
    """Convert an in-memory image array to an 8-bit RGB ``PIL.Image``.

    Args:
        arr: HxW (grayscale), HxWx1, HxWx3 (RGB) or HxWx4 (RGBA) array of any numeric dtype.

    Returns:
        The RGB image.

    Raises:
        DatasetError: When the array does not have one of those shapes.
    """
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return Image.fromarray(_array_to_uint8(arr), mode="L").convert("RGB")
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        data = _array_to_uint8(arr)
        if arr.shape[2] == 3:
            return Image.fromarray(np.ascontiguousarray(data), mode="RGB")
        return _composite_on_white(Image.fromarray(np.ascontiguousarray(data), mode="RGBA"))
    raise DatasetError(
        f"cannot interpret an image array of shape {arr.shape} and dtype {arr.dtype}; "
        "expected HxW, HxWx1, HxWx3 or HxWx4"
    )


#: What a dataset error suggests by default (training and eval.py read datasets, where the key exists).
DATASET_FIX = "replace the file, or set skip_bad_images: true to drop unreadable images"


def load_rgb(source: Union[str, os.PathLike, np.ndarray], fix: str = DATASET_FIX) -> Image.Image:
    """Load an image file (or take an image array) and return it as 8-bit RGB.

    Handles grayscale, CMYK, RGBA/LA (composited on white), palette images with or without
    transparency, and 16-bit/32-bit/float single-channel images (scaled to 8 bits).

    Args:
        source: Path of an image file, or an image array (see :func:`array_to_rgb`).
        fix: What the error message suggests (predict.py, which has no ``skip_bad_images`` key,
            passes its own).

    Returns:
        A fully decoded RGB ``PIL.Image`` that holds no open file.

    Raises:
        DatasetError: When the file is missing, unreadable, truncated, not an image or too large
            to decode (more pixels than ``PIL.Image.MAX_IMAGE_PIXELS``, a decompression bomb); the
            one-line message names the path.
    """
    if isinstance(source, np.ndarray):
        return array_to_rgb(source)
    path = os.fspath(source)
    try:
        img = Image.open(path)
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path}; {fix}") from None
    except IsADirectoryError:
        raise DatasetError(f"not an image file but a folder: {path}; {fix}") from None
    except UnidentifiedImageError:
        raise DatasetError(
            f"not an image PIL can read: {path} (corrupt file, or a format PIL does not support); {fix}"
        ) from None
    except Image.DecompressionBombError as exc:
        raise DatasetError(f"image {path} is too large to decode safely ({_one_line(exc)}); {fix}") from None
    except OSError as exc:
        raise DatasetError(f"cannot read image {path}: {_one_line(exc)}; {fix}") from None
    except Exception as exc:
        raise DatasetError(f"corrupt image {path}: {type(exc).__name__}: {_one_line(exc)}; {fix}") from None
    try:
        img.load()
        return to_rgb(img)
    except Image.DecompressionBombError as exc:
        raise DatasetError(f"image {path} is too large to decode safely ({_one_line(exc)}); {fix}") from None
    except MemoryError:
        raise DatasetError(f"image {path} ({img.size[0]}x{img.size[1]} px) does not fit in memory; {fix}") from None
    except Exception as exc:
        raise DatasetError(
            f"corrupt or truncated image {path}: {type(exc).__name__}: {_one_line(exc)}; {fix}"
        ) from None
    finally:
        img.close()


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, cut to ``limit`` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "..."
